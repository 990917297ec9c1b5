"""``python -m dyhead_serve.export``: the ``dyhead-export`` command."""

import sys

from .cli import main

sys.exit(main())
