"""Which images a search may return: :class:`Filters`, and the SQL that applies them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from crossalign.errors import ConfigError

__all__ = ["Filters"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?$")


@dataclass(frozen=True)
class Filters:
    """Which images a search may return; a caption passes when its image does.

    Every field left empty lets everything through; the fields given must all hold.

    Args:
        split: the image's split, or several separated by commas (``train,val``).
        folder: the image's folder relative to its source, or any folder below it.
        since: the picture's date (EXIF, else the file's mtime) is on or after this
            (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM:SS``).
        until: ... on or before this (a bare date includes the whole day).
        labels: ``(column, value)`` pairs: the image's value in that label column is the
            value, or one of its classes (``drama|comedy`` holds both).
    """

    split: str = ""
    folder: str = ""
    since: str = ""
    until: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value and not _DATE.match(value):
                raise ConfigError(f"{name} must be a date like 2024-05-31 (or 2024-05-31T18:30:00), "
                                  f"got {value!r}")
        for column, value in self.labels:
            if not column or not value:
                raise ConfigError(f"a label filter needs a column and a value (COLUMN=VALUE), got "
                                  f"{column!r}={value!r}")

    @classmethod
    def of(cls, split: str | None = None, folder: str | None = None, since: str | None = None,
           until: str | None = None, labels: Iterable[str] = ()) -> "Filters":
        """Filters from the strings a user types; each label filter is ``COLUMN=VALUE``."""
        pairs = []
        for text in labels or ():
            column, eq, value = str(text).partition("=")
            if not eq:
                raise ConfigError(f"a label filter is COLUMN=VALUE (say genre=drama), got {text!r}")
            pairs.append((column.strip(), value.strip()))
        return cls((split or "").strip(), (folder or "").strip(), (since or "").strip(),
                   (until or "").strip(), tuple(pairs))

    def __bool__(self) -> bool:
        return bool(self.split or self.folder or self.since or self.until or self.labels)

    def normalised(self) -> "Filters":
        """This filter written one way, so that two filters that select the same rows by the
        same rule are equal: splits de-duplicated and sorted, the folder without slashes at
        its ends, label filters de-duplicated and sorted."""
        splits = sorted({x.strip() for x in self.split.split(",") if x.strip()})
        # a split of nothing but commas names no split and lets nothing through; a folder of
        # nothing but slashes is the top folder: both keep a character that says so
        split = ",".join(splits) or self.split[:1]
        folder = self.folder.strip("/") or self.folder[:1]
        return Filters(split, folder, self.since, self.until, tuple(sorted(set(self.labels))))

    def where(self) -> tuple[str, list]:
        """The SQL condition on ``images`` and its arguments ("1" when nothing is filtered)."""
        parts, args = [], []
        if self.split:
            splits = [x.strip() for x in self.split.split(",") if x.strip()]
            parts.append(f"split IN ({','.join('?' * len(splits))})")
            args += splits
        if self.folder:
            folder = self.folder.strip("/")
            parts.append("(folder = ? OR substr(folder, 1, ?) = ?)")
            args += [folder, len(folder) + 1, folder + "/"]
        if self.since:
            parts.append("date != '' AND date >= ?")
            args.append(self.since)
        if self.until:
            parts.append("date != '' AND date <= ?")
            args.append(self.until if "T" in self.until else self.until + "T23:59:59")
        for column, value in self.labels:
            path = '$."' + column.replace('"', '\\"') + '"'
            parts.append("instr('|' || CAST(json_extract(labels, ?) AS TEXT) || '|', ?) > 0")
            args += [path, "|" + value + "|"]
        return (" AND ".join(f"({p})" for p in parts) or "1"), args
