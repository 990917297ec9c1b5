"""The command-line layer: every argparse parser of ``dyhead-serve`` and ``dyhead-export``.

One module per command (:mod:`~dyhead_serve.cli.predict`, ``train``, ``eval``, ``zoo``, ``serve``,
``export`` with its ``tensorrt`` and ``engine`` subcommands), the model options they share
(:mod:`~dyhead_serve.cli.model_options`) and the one place that turns a
:class:`~dyhead_serve.errors.UserError` into ``error: ...`` and exit status 2
(:mod:`~dyhead_serve.cli.run`). Nothing outside this package imports it.
"""

from dyhead_serve.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
