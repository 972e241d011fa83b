"""Synonym look-up in a local WordNet 3.0 database folder (the Princeton ``dict`` files).

Reads the plain database files (``index.noun``, ``data.noun``, ... as described in the
``wndb(5WN)`` manual page) directly: Debian's ``wordnet-base`` package installs them in
``/usr/share/wordnet`` without the ``lexnames`` file that nltk's reader insists on, and nltk's
path sandbox refuses folders outside its own data path anyway. The format has not changed since
2006, and synonym look-up needs only two of its records, so a small reader is the sturdier choice.

Index files are sorted by lemma (byte order), so a look-up is a binary search over the file held
in memory (about 6 MB for all four); synsets are read by byte offset from the data files on
demand, so nothing is parsed up front and a forked data-loader worker shares the index pages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from crossalign.errors import WordNetMissing

__all__ = ["WordNet", "find_wordnet_dir", "INSTALL_HINT"]

POS = ("noun", "verb", "adj", "adv")
_SS_TYPE = {b"1": "noun", b"2": "verb", b"3": "adj", b"4": "adv", b"5": "adj"}  # sense-key synset types
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers such as "(p)", "(ip)"
INSTALL_HINT = (
    "install WordNet with `apt-get install wordnet-base` (Debian/Ubuntu; files in /usr/share/wordnet), "
    "or point augment.wordnet_dir / $CROSSALIGN_WORDNET_DIR at a folder holding WordNet 3.0's "
    "index.noun and data.noun files; or set augment.synonym_prob=0"
)


def _candidates(configured: str) -> list[Path]:
    if configured:
        return [Path(configured).expanduser()]
    env = os.environ.get("CROSSALIGN_WORDNET_DIR")
    if env:
        return [Path(env).expanduser()]
    return [
        Path("/usr/share/wordnet"),  # Debian / Ubuntu wordnet-base
        Path("/usr/local/share/wordnet"),
        Path.home() / "nltk_data" / "corpora" / "wordnet",  # an unzipped nltk corpus has the same files
    ]


def find_wordnet_dir(configured: str = "") -> Path:
    """Resolve the WordNet folder: ``configured``, else ``$CROSSALIGN_WORDNET_DIR``, else well-known places.

    Raises:
        WordNetMissing: no candidate holds ``index.noun`` and ``data.noun``.
    """
    tried = _candidates(configured)
    for path in tried:
        if (path / "index.noun").is_file() and (path / "data.noun").is_file():
            return path
    where = ", ".join(str(p) for p in tried)
    raise WordNetMissing(f"WordNet database not found (looked in {where}): {INSTALL_HINT}")


def _lower_bound(blob: bytes, key: bytes) -> int:
    """Offset of the first line of a sorted file whose first field is >= ``key``."""
    lo, hi = 0, len(blob)
    while lo < hi:
        mid = (lo + hi) // 2
        start = blob.rfind(b"\n", 0, mid) + 1
        end = blob.find(b"\n", start)
        end = len(blob) if end < 0 else end
        line = blob[start:end]
        if line.startswith(b"  ") or line.split(b" ", 1)[0] < key:  # the licence header sorts first
            lo = end + 1
        else:
            hi = start
    return lo


def _find_line(blob: bytes, key: bytes) -> bytes | None:
    """The line of a sorted index file whose first field is ``key``, or None."""
    start = _lower_bound(blob, key)
    end = blob.find(b"\n", start)
    line = blob[start:end if end >= 0 else len(blob)]
    return line if line.split(b" ", 1)[0] == key else None


class WordNet:
    """Read-only synonym look-up over one WordNet database folder.

    Args:
        root: folder with ``index.<pos>`` and ``data.<pos>`` files (see :func:`find_wordnet_dir`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._index: dict[str, bytes] = {}
        self._cache: dict[tuple, tuple[str, ...]] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def _index_blob(self, name: str, prefix: str = "index.") -> bytes:
        if name not in self._index:
            path = self.root / f"{prefix}{name}"
            self._index[name] = path.read_bytes() if path.is_file() else b""
        return self._index[name]

    def _offsets(self, lemma: str, pos: str) -> list[int]:
        line = _find_line(self._index_blob(pos), lemma.encode("utf-8"))
        if line is None:
            return []
        fields = line.split()
        n_synsets = int(fields[2])  # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets...
        return [int(x) for x in fields[-n_synsets:]]

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        with open(self.root / f"data.{pos}", "rb") as f:
            f.seek(offset)
            fields = f.readline().decode("utf-8").split()
        n_words = int(fields[3], 16)  # offset lex_filenum ss_type w_cnt(hex) [word lex_id]...
        return [_MARKER.sub("", fields[4 + 2 * i]) for i in range(n_words)]

    def synonyms(self, lemma: str, max_synsets: int = 3, pos: tuple[str, ...] = POS) -> tuple[str, ...]:
        """Lemma names of the first ``max_synsets`` senses of ``lemma`` in each part of speech.

        Senses come in WordNet's frequency order, so the first few are the common meanings.
        Underscores become spaces; ``lemma`` itself is left out; order is stable.

        Args:
            lemma: a base form, lower case (``"dog"``, ``"run"``).
            max_synsets: senses per part of speech to draw from.
            pos: parts of speech to look in (``"noun"``, ``"verb"``, ``"adj"``, ``"adv"``).
        """
        key = (lemma, max_synsets, pos)
        if key not in self._cache:
            seen: dict[str, None] = {}
            for part in pos:
                for offset in self._offsets(lemma, part)[:max_synsets]:
                    for word in self._synset_words(part, offset):
                        name = word.replace("_", " ")
                        if name.lower() != lemma:
                            seen.setdefault(name, None)
            self._cache[key] = tuple(seen)
        return self._cache[key]

    def tag_counts(self, lemma: str) -> dict[str, int]:
        """How often each part of speech of ``lemma`` was seen in WordNet's tagged corpus.

        From ``cntlist.rev`` (sense keys ``lemma%ss_type:...`` with a count), sorted by key; an
        empty dict when the file is missing or the lemma was never tagged.
        """
        if lemma not in self._counts:
            blob = self._index_blob("cntlist.rev", prefix="")
            prefix = lemma.encode("utf-8") + b"%"
            counts: dict[str, int] = {}
            pos = _lower_bound(blob, prefix)
            while blob.startswith(prefix, pos):
                end = blob.find(b"\n", pos)
                end = len(blob) if end < 0 else end
                key, _, count = blob[pos:end].split(b" ")
                part = _SS_TYPE[key[len(prefix):len(prefix) + 1]]
                counts[part] = counts.get(part, 0) + int(count)
                pos = end + 1
            self._counts[lemma] = counts
        return self._counts[lemma]

    def main_pos(self, lemma: str) -> str | None:
        """The part of speech ``lemma`` is most often used in (the first listed on a tie), or None."""
        parts = [part for part in POS if self.has(lemma, (part,))]
        counts = self.tag_counts(lemma)
        return max(parts, key=lambda part: counts.get(part, 0)) if parts else None

    def has(self, lemma: str, pos: tuple[str, ...] = POS) -> bool:
        """Whether ``lemma`` is a base form in any of the parts of speech ``pos``."""
        return any(_find_line(self._index_blob(part), lemma.encode("utf-8")) for part in pos)
