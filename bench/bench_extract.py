"""Feature extraction end to end against the raw forward of the same tower.

For one image tower (EfficientNet-Lite0, timm ``tf_efficientnet_lite0``, as crossalign's
``efficientnet_lite0``), one batch size and one torch thread count, times:

- (a) ``raw``: the tower's channels-last forward on tensors decoded and preprocessed
  before the clock starts (the upper bound of extraction);
- (b) ``crossalign``: ``crossalign.embed.image_features`` from image files with the
  feature cache off: decoding, preprocessing and the forward, with ``--workers`` decoding
  processes (a ``torch.utils.data.DataLoader``), worker start-up included;

and prints images/s of each and the ratio (b)/(a) (target >= 0.9). For (b) it also prints
how much of the wall time the main process spent in the tower's forward: near 1 means
decoding is hidden behind the forward; well below 1 means the forward waited for images
(more workers would help) or the main process did other work per batch.

Settings that matter when reading the figures: the machine should be idle; threads plus
workers should not exceed the cores (each decoding worker runs one torch thread, which
DataLoader sets), which is what the default ``--threads`` ensures; each figure is the
median of ``--repeat`` runs.

What extraction does so that (b) comes close to (a): one DataLoader runs over all the
images still to extract (workers start once and never drain between cache shards); the
workers stack each batch and make it channels-last, so the main process only runs the
forward and one tensor per batch crosses between processes; decoding workers run one
torch thread each. JPEG draft mode (decoding at 1/2, 1/4 or 1/8 scale) is not used: it
changes the pixels the tower sees, and so the features.

    python bench/bench_extract.py --data ../shared/data/flickr8k --n 512
    python bench/bench_extract.py --data ../shared/data/flickr8k --n 512 --threads 4 --workers 0,1,2,4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def find_images(folder: Path, n: int) -> list[str]:
    """The first ``n`` image files (by name) under ``folder/images`` or ``folder``."""
    root = folder / "images" if (folder / "images").is_dir() else folder
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"{folder}: no images found")
    return paths[:n]


def build_tower(name: str):
    from crossalign.models.registry import create

    torch.manual_seed(0)
    tower = create(name, pretrained=False)  # random weights: the time does not depend on them
    return tower.eval()


@torch.no_grad()
def time_raw(tower, paths: list[str], batch_size: int) -> float:
    """Seconds of the channels-last forward over pre-decoded batches."""
    from crossalign.data.transforms import eval_transform, load_image

    transform = eval_transform(tower.data_config)
    pixels = torch.stack([transform(load_image(p)) for p in paths])  # [n, 3, H, W]
    batches = [pixels[s:s + batch_size].contiguous(memory_format=torch.channels_last)
               for s in range(0, len(pixels), batch_size)]
    tower(batches[0])  # warm-up: first-call allocations and kernel choice
    t0 = time.perf_counter()
    for b in batches:
        tower(b)  # [batch, width]
    return time.perf_counter() - t0


class _Timed(torch.nn.Module):
    """The tower, counting the seconds spent in its forward."""

    def __init__(self, tower) -> None:
        super().__init__()
        self.tower, self.seconds = tower, 0.0
        self.width, self.data_config = tower.width, tower.data_config
        self.channels_last = getattr(tower, "channels_last", False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.tower(pixels)
        self.seconds += time.perf_counter() - t0
        return out


def time_crossalign(tower, paths: list[str], batch_size: int, workers: int) -> tuple[float, float]:
    """Seconds of ``image_features`` end to end, and the share of them spent in the forward."""
    from crossalign.embed.towers import image_features

    timed = _Timed(tower)
    with torch.no_grad():
        tower(torch.zeros(2, *tower.data_config["input_size"]))  # the same warm-up as raw
    t0 = time.perf_counter()
    out = image_features(timed, paths, None, batch_size=batch_size, progress=False, workers=workers)
    wall = time.perf_counter() - t0
    if out.failed:
        raise SystemExit(f"{len(out.failed)} images failed, e.g. {next(iter(out.failed.values()))}")
    return wall, timed.seconds / wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="a data folder (its images/) or any folder of images")
    ap.add_argument("--n", type=int, default=512, help="images to extract")
    ap.add_argument("--tower", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of this process for (a) and (b); "
                         "0: the cores that the most workers leave free")
    ap.add_argument("--workers", default="2",
                    help="decoding processes for (b), comma-separated to try several")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    # decoding workers need cores of their own, or they preempt the forward's threads
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - max(workers)))
    paths = find_images(args.data, args.n)
    tower = build_tower(args.tower)
    print(f"tower {args.tower}, {len(paths)} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    raw = statistics.median(time_raw(tower, paths, args.batch_size) for _ in range(args.repeat))
    raw_rate = len(paths) / raw
    print(f"{'mode':<28} {'images/s':>9} {'ratio':>6} {'in forward':>10}")
    print(f"{'(a) raw channels-last forward':<28} {raw_rate:9.1f} {1.0:6.2f} {1.0:10.2f}")
    for w in workers:
        runs = [time_crossalign(tower, paths, args.batch_size, w) for _ in range(args.repeat)]
        wall, busy = statistics.median(w for w, _ in runs), statistics.median(b for _, b in runs)
        rate = len(paths) / wall
        print(f"{f'(b) crossalign, {w} workers':<28} {rate:9.1f} {rate / raw_rate:6.2f} {busy:10.2f}")


if __name__ == "__main__":
    main()
