"""The one exception type for user errors, which the CLI and the service report in one line."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user: a flag, a file, a name or a value. The message says how to fix it."""
