"""crossalign: CLIP-style image-text alignment on your own paired data.

One function per command, with the command's name, parameters and defaults::

    import crossalign

    run = crossalign.train("data/", "runs/a")            # crossalign train --data data/ --out runs/a
    crossalign.evaluate("runs/a", split="test")          # crossalign evaluate runs/a --split test
    crossalign.index("runs/a", out="idx", data="data/")  # crossalign index runs/a --out idx --data data/
    crossalign.search("idx", "a dog on the beach", k=5)  # crossalign search idx "a dog on the beach" -k 5
    model = crossalign.load("runs/a")                     # vectors: model.encode_text([...])

Heavy libraries are imported inside the functions, so ``import crossalign`` is instant.
"""

from __future__ import annotations

# The rooms that share a name with a command's function (crossalign/train/, crossalign/evaluate/,
# ...) are imported first: the import system sets a subpackage as an attribute of its parent
# when it first loads it, so once they are loaded here, the functions bound below keep the names.
from crossalign import caption as _caption_room  # noqa: F401
from crossalign import embed as _embed_room  # noqa: F401
from crossalign import evaluate as _evaluate_room  # noqa: F401
from crossalign import explain as _explain_room  # noqa: F401
from crossalign import index as _index_room  # noqa: F401
from crossalign import report as _report_room  # noqa: F401
from crossalign import serve as _serve_room  # noqa: F401
from crossalign import train as _train_room  # noqa: F401
from crossalign.api import (COMMANDS, Aligner, EmbedSummary, caption, check, convert, duplicates, embed,
                            evaluate, explain, export, index, load, report, search, serve, synth,
                            towers, train, tune, zeroshot)

__version__ = "0.1.0"
__all__ = [*COMMANDS, "load", "Aligner", "EmbedSummary", "__version__"]
