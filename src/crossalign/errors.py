"""The errors a user caused, apart from bugs.

Every error that bad input, a bad option or a missing file can cause derives from
:class:`CrossalignError` and carries a message naming the file, row or option. The command
line prints those as one line and exits 2; the service answers them with a 4xx. Anything
else is a bug and keeps its traceback.

Most subclasses are also ``ValueError`` (or ``FileNotFoundError``), so code written against
the standard types keeps working.
"""

from __future__ import annotations

__all__ = ["CrossalignError", "ConfigError", "InputNotFound", "RunError"]


class CrossalignError(Exception):
    """Base of every error the user can fix; the message says what and where."""


class ConfigError(CrossalignError, ValueError):
    """An option or argument out of its range, or a setting that does not exist."""


class InputNotFound(CrossalignError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class RunError(CrossalignError, ValueError):
    """A run folder that is missing, incomplete or does not fit the request."""
