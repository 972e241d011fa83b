"""A training step of MiniLM's last N layers over a cached prefix: one padded batch against length groups.

    python bench/bench_text_steps.py --flickr ../shared/data/flickr8k [--batch 1024] [--last 2 3] \
        [--chunks 0 64 128 256] [--repeats 5]

A step of ``model.text.freeze=last:N`` runs the last N layers (forward and backward) over the cached
prefix of the batch's captions. ``crossalign.train.sides`` runs them in groups of ``TEXT_CHUNK``
captions of similar length, each padded to its own longest caption; ``--chunks 0`` is one group, the
whole batch padded to its longest caption (the engine before the groups). Printed per N and group
size: the median seconds of a step (forward, backward; the heads left out) over ``--repeats`` batches
of ``--batch`` random Flickr8k captions, the padded token count against the real one, and the speed-up
over one group. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from crossalign.config import load_config
from crossalign.models.dual import apply_freeze
from crossalign.models.registry import create
from crossalign.train import sides


def _captions(folder: Path) -> list[str]:
    with open(folder / "captions.txt", newline="", encoding="utf-8") as f:
        return [row["caption"] for row in csv.DictReader(f)]


def _prefixes(tower, texts: list[str], n_last: int) -> list[dict]:
    items: list[dict] = []
    with torch.no_grad():
        for s in range(0, len(texts), 256):
            items += sides._split_prefix(tower.forward_prefix(**tower.tokenize(texts[s:s + 256]), n_last=n_last))
    return items


def _padded_tokens(lengths: list[int], chunk: int) -> int:
    return sum(len(g) * max(lengths[i] for i in g) for g in sides.length_chunks(lengths, chunk))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flickr", type=Path, required=True, help="a folder with captions.txt")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--last", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    captions = _captions(args.flickr)
    rng = np.random.default_rng(0)
    batches = [[captions[i] for i in rng.choice(len(captions), args.batch, replace=False)]
               for _ in range(args.repeats)]
    name = load_config(None, []).model.text.tower
    print(f"torch threads {torch.get_num_threads()}; {name}; {args.repeats} batches of {args.batch} captions")
    print("| last N | group | s per step (median) | padded / real tokens | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for n_last in args.last:
        tower = create(name)
        apply_freeze(tower, f"last:{n_last}")
        tower.train()
        prefixes = [_prefixes(tower, texts, n_last) for texts in batches]
        warm = prefixes[0][:64]  # one untimed step first: the allocator and the kernels warm up
        tower.forward_suffix(sides._pad_prefix(warm), n_last=n_last).sum().backward()
        base = None
        for chunk in args.chunks:
            sides.TEXT_CHUNK = chunk if chunk > 0 else args.batch
            times, ratios = [], []
            for items in prefixes:
                lengths = [int(it["attention_mask"].shape[0]) for it in items]
                ratios.append(_padded_tokens(lengths, sides.TEXT_CHUNK) / sum(lengths))

                def suffix(group: list[dict]) -> torch.Tensor:
                    return tower.forward_suffix(sides._pad_prefix(group), n_last=n_last)

                tower.zero_grad()
                t0 = time.perf_counter()
                sides._in_chunks(suffix, items, lengths).sum().backward()
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            base = base or median
            label = "whole batch" if chunk <= 0 else str(chunk)
            print(f"| {n_last} | {label} | {median:.2f} | {statistics.mean(ratios):.2f} | {base / median:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
