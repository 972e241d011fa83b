"""The errors a user caused, apart from bugs.

Every error that bad input, a bad option or a missing file can cause derives from
:class:`CrossalignError` and carries a message naming the file, row or option. The command
line prints those as one line and exits 2; the service answers them with a 4xx. Anything
else is a bug and keeps its traceback.

Most subclasses are also ``ValueError`` (or ``FileNotFoundError``), so code written against
the standard types keeps working.
"""

from __future__ import annotations

__all__ = ["CrossalignError", "ConfigError", "InputNotFound", "RunError", "CheckpointError", "DataError",
           "ImageError", "WriteError", "WordNetMissing", "UnknownItem"]


class CrossalignError(Exception):
    """Base of every error the user can fix; the message says what and where."""


class ConfigError(CrossalignError, ValueError):
    """An option or argument out of its range, or a setting that does not exist."""


class InputNotFound(CrossalignError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class RunError(CrossalignError, ValueError):
    """A run folder that is missing, incomplete or does not fit the request."""


class CheckpointError(CrossalignError, RuntimeError):
    """A run folder whose weights cannot be restored; the message says why."""


class DataError(CrossalignError, ValueError):
    """Input data that cannot be read; the message names the file (and row)."""


class ImageError(CrossalignError, ValueError):
    """An image file that cannot be used; the message names the file.

    ``kind`` says why: missing, empty_file, truncated, too_large or unreadable.
    """

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


class WriteError(CrossalignError, OSError):
    """A file could not be written (disk full, read-only or not permitted); names the path."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


class WordNetMissing(CrossalignError, ValueError):
    """No WordNet database folder was found; the message says how to install one."""


class UnknownItem(CrossalignError, KeyError):
    """An image or caption id that the index does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown item"
