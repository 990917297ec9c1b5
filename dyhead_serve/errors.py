"""The one base class of every error a user can cause and fix.

Anything raised for a bad file, option, config, checkpoint, image or model folder derives from
:class:`UserError`. The command-line layer maps it (and only it) to one ``error: ...`` line and
exit status 2; the server maps the ones a request can cause to 4xx answers. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user gave (a file, an option, a config value), not a bug.

    The message is complete on its own: it names the file, option or key at fault and says
    what to change. It is printed as ``error: <message>`` with exit status 2.
    """
