"""A search query in one string: weighted terms for the vector search, words for the keyword one.

The grammar, the same on the page, in the API (``query=``) and in ``crossalign search
--query``::

    query  := term ( ' ' sign term )*
    sign   := '+' | '-'
    term   := words [ ':' WEIGHT ]        words run on until the next word that starts with a sign
    words  := word+ | '"' any text '"'

``beach +sunset:0.5 -people`` is three terms: "beach" (weight 1), "sunset" (weight 0.5) and
"people" pushed away (weight 1); ``a dog in the snow +night:0.3`` is two. A sign inside a word
(``t-shirt``) is part of the word; a weight is a plain decimal number.

The vector search adds each term's vector times its weight and subtracts the pushed ones (see
:mod:`crossalign.index.search`). The keyword search reads the same string its own way
(:func:`fts_match`): a term's words are alternatives (any may match; BM25 ranks items with more
of them, and rarer ones, higher), a quoted term is a phrase that must match, a ``-`` term is a
word or phrase that must not, and a word ending in ``*`` matches every word it begins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crossalign.errors import ConfigError

__all__ = ["Term", "Query", "parse_query", "fts_match", "gram_match", "trigrams"]

_TOKEN = re.compile(r'([+-]?)"([^"]*)"(?::(\S*))?|(\S+)')
_WEIGHT = re.compile(r"^(.*?):([0-9]*\.?[0-9]+)$")
_WORD = re.compile(r"[\w*]+", re.UNICODE)
# words that nearly every caption has: left out of a keyword query's alternatives (kept when a
# term has nothing else), so that they do not make every item a candidate
_COMMON = frozenset("a an and are as at be by for from has in is it of on or the to with".split())
MAX_TERMS = 16


@dataclass
class Term:
    """One term of a query: its text, its weight (negative: pushed away), and whether it was
    quoted (a phrase for the keyword search)."""

    text: str
    weight: float = 1.0
    phrase: bool = False


@dataclass
class Query:
    """A parsed query string."""

    terms: list[Term] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [t.text for t in self.terms]

    @property
    def weights(self) -> list[float]:
        return [t.weight for t in self.terms]


def _weight(text: str, raw: str | None, whole: str) -> float:
    if raw is None:
        return 1.0
    try:
        w = float(raw)
    except ValueError:
        raise ConfigError(f"query {whole!r}: the weight of {text!r} must be a number, got "
                          f"{raw!r}") from None
    if not 0 < w < float("inf"):
        raise ConfigError(f"query {whole!r}: the weight of {text!r} must be positive (a "
                          f"'-' term pushes away), got {raw}")
    return w


def parse_query(text: str) -> Query:
    """The terms of a query string (see the module docstring for the grammar).

    Raises:
        ConfigError: an empty query, an empty term, a bad weight, or only terms pushed away.
    """
    whole = str(text)
    terms: list[Term] = []
    current: list[str] | None = None  # the words of an unquoted term still growing

    def close() -> None:
        nonlocal current
        if current is None:
            return
        sign, words = current[0], current[1:]
        last = _WEIGHT.match(words[-1]) if words else None
        raw = None
        if last:
            words[-1], raw = last.group(1), last.group(2)
            words = [w for w in words if w]
        phrase = " ".join(words)
        if not phrase:
            raise ConfigError(f"query {whole!r}: a term {sign or ''}with no words")
        w = _weight(phrase, raw, whole)
        terms.append(Term(phrase, -w if sign == "-" else w))
        current = None

    for m in _TOKEN.finditer(whole):
        sign, quoted, qweight, word = m.groups()
        if word is None:  # a quoted term stands alone
            close()
            if not quoted.strip():
                raise ConfigError(f"query {whole!r}: an empty quoted term")
            w = _weight(quoted, qweight, whole) if qweight is not None else 1.0
            terms.append(Term(quoted.strip(), -w if sign == "-" else w, phrase=True))
            continue
        if word[0] in "+-" and len(word) > 1:
            close()
            current = [word[0], word[1:]]
        elif current is None:
            current = ["", word]
        else:
            current.append(word)
    close()
    if not terms:
        raise ConfigError("the query is empty")
    if len(terms) > MAX_TERMS:
        raise ConfigError(f"query {whole!r}: at most {MAX_TERMS} terms, got {len(terms)}")
    if all(t.weight < 0 for t in terms):
        raise ConfigError(f"query {whole!r}: every term is pushed away; give one to look for")
    return Query(terms)


def _quoted(word: str) -> str:
    """An FTS5 string (punctuation inside is safe); a trailing ``*`` makes it a prefix."""
    prefix = word.endswith("*") and len(word.strip("*")) > 0
    body = word.rstrip("*") if prefix else word
    return '"' + body.replace('"', '""') + '"' + (" *" if prefix else "")


def fts_match(query: Query) -> str:
    """The SQLite FTS5 ``MATCH`` expression of a query (see the module docstring).

    Raises:
        ConfigError: when nothing is left to look for (only pushed-away terms, or no words).
    """
    alternatives, required, excluded = [], [], []
    for t in query.terms:
        if t.weight < 0:
            words = [t.text] if t.phrase else _WORD.findall(t.text)
            excluded += [_quoted(w) for w in words]
        elif t.phrase:
            required.append(_quoted(t.text))
        else:
            words = [w.lower() for w in _WORD.findall(t.text)]
            kept = [w for w in words if w not in _COMMON] or words
            alternatives += [_quoted(w) for w in dict.fromkeys(kept)]
    parts = ([f"({' OR '.join(alternatives)})"] if alternatives else []) + required
    if not parts:
        raise ConfigError("the keyword query has no word to look for (only words to leave out)")
    expr = " AND ".join(parts)
    return expr + "".join(f" NOT {x}" for x in excluded)


def trigrams(word: str) -> list[str]:
    """The character trigrams of a word, lower-cased, in order, each once."""
    w = word.lower()
    return list(dict.fromkeys(w[i:i + 3] for i in range(len(w) - 2)))


def gram_match(query: Query) -> str | None:
    """An FTS5 expression over character trigrams (the ``trigram`` tokenizer) that any
    trigram of the query's words to look for matches, so that a word read nearly right in a
    picture still matches; None when no word has three characters, and for a query with a
    phrase or a word to leave out (whose rules a trigram cannot keep)."""
    if any(t.phrase or t.weight < 0 for t in query.terms):
        return None
    grams = []
    for t in query.terms:
        if t.weight > 0:
            grams += [g for w in _WORD.findall(t.text) if w.lower() not in _COMMON
                      for g in trigrams(w.strip("*"))]
    grams = list(dict.fromkeys(grams))
    return " OR ".join(_quoted(g) for g in grams) if grams else None
