"""The base of every error a user can act on: printed as one line, exit code 2, no traceback.

Each layer keeps its own exception (``DataError``, ``ConfigError``, ``LedgerError``, ...)
and derives it from :class:`UserError`, so that the CLI catches them all without
importing the layers (and torch, Opacus or Flower) before a command needs them.
"""


class UserError(Exception):
    """A problem in the user's input, files or environment; ``str(error)`` is one line."""
