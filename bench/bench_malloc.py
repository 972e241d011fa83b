"""glibc's malloc with and without the CLI's setting (``CROSSALIGN_MALLOC``), on real Flickr8k images.

    python bench/bench_malloc.py --flickr ../shared/data/flickr8k --work /tmp/malloc [--limit 400]

The first ``--limit`` images of the standard split (3:1:1, as ``bench/flickr8k.py --limit`` makes
them), and the three stages of a Flickr8k recipe that run towers, each a ``crossalign train`` process
of its own, from an empty feature cache per setting:

- ``extract``: ``configs/flickr8k-best.yaml``'s first stage for 3 epochs (Lite0 + Lite2 features of
  the images and their mirrors, MiniLM's of the captions, then the heads);
- ``text``: MiniLM's last two layers from those heads, 2 epochs at batch 1024 (a cached prefix);
- ``image``: both image towers' last block from that run, 1 epoch at batch 1024 (a cached prefix).

Each runs first with ``CROSSALIGN_MALLOC=system`` (glibc's defaults), then with the setting the CLI
makes (freed blocks kept). Printed per process: wall seconds, user and system CPU seconds, peak RSS
and minor page faults (``os.wait4``: the process and the children it waited for). Run it on an idle
machine; nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flickr8k import _subset  # noqa: E402  (the grid's subset: the same folders)

ROOT = Path(__file__).resolve().parents[1]
BEST = ROOT / "configs" / "flickr8k-best.yaml"


def _stages(data: Path, out: Path) -> list[tuple[str, list[str]]]:
    s1, s2 = out / "extract", out / "text"
    train = ["crossalign", "--quiet", "train", "--data", str(data)]
    return [
        ("extract", train + ["--out", str(s1), "--config", str(BEST), "--set", "then=[]",
                             "--set", "train.epochs=3"]),
        ("text", train + ["--out", str(s2), "--config", str(s1 / "config.yaml"), "--set", f"train.init_from={s1}",
                          "--set", "model.text.freeze=last:2", "--set", "train.backbone_lr=5e-5",
                          "--set", "train.lr=1e-4", "--set", "train.epochs=2", "--set", "train.batch_size=1024",
                          "--set", "train.keep=best", "--set", "train.warmup_steps=10"]),
        ("image", train + ["--out", str(out / "image"), "--config", str(s2 / "config.yaml"),
                           "--set", f"train.init_from={s2}", "--set", "model.text.freeze=frozen",
                           "--set", "model.image.freeze=last:1", "--set", "model.image.bn_stats=keep",
                           "--set", "train.backbone_lr=1e-4", "--set", "train.lr=3e-5", "--set", "train.epochs=1",
                           "--set", "train.batch_size=1024", "--set", "train.keep=best",
                           "--set", "train.warmup_steps=10"]),
    ]


def _run(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "rss_gb": ru.ru_maxrss / 2**20,
            "faults_m": ru.ru_minflt / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flickr", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--limit", type=int, default=400)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = _subset(args.flickr, args.work, args.limit)
    rows = []
    for setting in ("system", "kept"):
        out = args.work / setting
        if out.exists():
            raise SystemExit(f"{out} exists: give an empty --work")
        env = {**os.environ, "CROSSALIGN_CACHE_DIR": str(out / "cache")}
        if setting == "system":
            env["CROSSALIGN_MALLOC"] = "system"
        else:
            env.pop("CROSSALIGN_MALLOC", None)
        for stage, cmd in _stages(data, out):
            r = _run(cmd, env)
            rows.append((stage, setting, r))
            print(f"{stage} {setting}: {r['wall']:.1f} s wall, user {r['user']:.1f} s, sys {r['sys']:.1f} s, "
                  f"peak RSS {r['rss_gb']:.2f} GB, {r['faults_m']:.2f} M minor faults", flush=True)
    print("\n| stage | malloc | wall s | user s | sys s | peak RSS GB | minor faults (M) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for stage in ("extract", "text", "image"):
        for stage_, setting, r in rows:
            if stage_ == stage:
                print(f"| {stage} | {setting} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | "
                      f"{r['rss_gb']:.2f} | {r['faults_m']:.2f} |")
        base, kept = (next(r for s, m, r in rows if s == stage and m == k) for k in ("system", "kept"))
        print(f"| {stage} | system / kept | {base['wall'] / kept['wall']:.2f}x | | | | |")


if __name__ == "__main__":
    main()
