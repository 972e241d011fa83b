"""The library's front: one function per command, with the command's name, parameters and
defaults, each owning its decisions and checks; ``crossalign`` re-exports them.

The command ``crossalign X --some-flag V`` calls ``X(some_flag=V)``; settings of a run go in as
keywords (``train(data, out, epochs=10, image_tower="lite2")``, see :func:`keywords`), as
``overrides`` strings (``"train.epochs=10"``, what ``--set`` takes) or as a ``config``.
Heavy libraries are imported inside the functions, so importing this is instant.
"""

from __future__ import annotations

from crossalign.api._data import check, convert, synth, towers
from crossalign.api._models import Aligner, EmbedSummary, embed, export, load
from crossalign.api._scoring import caption, evaluate, explain, report, zeroshot
from crossalign.api._searching import duplicates, index, search, serve
from crossalign.api._settings import keywords
from crossalign.api._training import train, tune

# the commands' functions, in the order ``crossalign --help`` lists the commands
COMMANDS = ["train", "tune", "evaluate", "zeroshot", "report", "index", "search", "serve", "duplicates",
            "explain", "caption", "embed", "export", "check", "convert", "synth", "towers"]

__all__ = [*COMMANDS, "load", "Aligner", "EmbedSummary", "keywords"]
