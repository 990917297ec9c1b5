"""``python -m dyhead_serve.cli``: the ``dyhead-serve`` command (``torchrun -m`` uses it too)."""

import sys

from dyhead_serve.cli.main import main

sys.exit(main())
