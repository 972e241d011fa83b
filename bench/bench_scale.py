"""How time and memory grow with the number of pairs: 10k, 100k and 1M.

    python bench/bench_scale.py --work /tmp/scale [--sizes 10000,100000,1000000]
        [--extract 1000,4000] [--eval 10000,100000]

Data: demo scenes (``crossalign.data.synthetic``) written as uncompressed webdataset shards
of 10,000 samples (one PNG and one caption each; 1,000 val and 1,000 test samples beside
them). A pool of 1,000 scenes is drawn and each sample's PNG gets its number appended after
the image's end, so every image has its own bytes and content key (PNG readers stop at the
end chunk); every caption names its sample, so the text side holds one row per pair too.

Every stage runs in a process of its own, which samples its ``RssAnon`` (private memory,
from /proc/self/status; pages of memory-mapped files the kernel may drop do not count)
every 20 ms and reports the peak:

- ``read``: ``read_webdataset`` over the shards (the second of two passes: the page cache
  is warm), beside a plain ``tarfile`` loop over the same shards;
- ``extract``: Lite0 features of the first M images computed and stored (a real
  extraction, into an empty store; at ``--extract`` sizes only: on two cores it runs at
  tens of images a second, so 1M would take hours);
- ``fill`` (benchmark setup, not a crossalign stage): the store filled straight with
  random float16 rows under the real keys (content hash of each member, tower
  fingerprints of Lite0 and MiniLM), for every size, as if extracted;
- ``setup`` and ``epoch``: the run's ``Engine`` (``run_engine``) made over the cached features (keys, store
  lookups, the data check), then one epoch of the default recipe (frozen Lite0 1280-d +
  MiniLM 384-d, linear heads) at batch 4096;
- ``embed``: ``crossalign embed`` of the training shards, one partition per shard;
- ``index``: ``crossalign index --from-embeddings`` of those partitions;
- ``eval``: the full cross-modal matrix of the first N training pairs (``--eval`` sizes:
  its cost grows with N squared).

Prints one table (seconds and peak RssAnon per stage and size), then each stage's growth
exponent, log(t2 / t1) / log(n2 / n1), between the smallest and the largest size measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

PER_SHARD = 10_000
HELD_OUT = 1_000  # samples in each of the val and test shards
POOL = 1_000


class Peak:
    """The peak RssAnon of this process, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = self.now()

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, self.now())


# ---- data ---------------------------------------------------------------------------------

def _pool(size: int = 96):
    from crossalign.data.synthetic import _scene

    rng = random.Random(0)
    out = []
    for _ in range(POOL):
        img, caps, _ = _scene(rng, size)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append((buf.getvalue(), caps))
    return out


def _write_shard(path: Path, first: int, n: int, pool) -> None:
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w") as tf:
        for i in range(first, first + n):
            png, caps = pool[i % len(pool)]
            for ext, payload in (("png", png + f"#{i}".encode()),
                                 ("txt", f"{caps[i % 5]} (sample {i})".encode())):
                info = tarfile.TarInfo(f"{i:08d}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    os.replace(tmp, path)


def make(work: Path, largest: int) -> None:
    shards = work / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    pool = _pool()
    plan = [(shards / f"train-{s:04d}.tar", s * PER_SHARD, PER_SHARD) for s in range(largest // PER_SHARD)]
    plan += [(shards / "val-0000.tar", 10**8, HELD_OUT), (shards / "test-0000.tar", 2 * 10**8, HELD_OUT)]
    for path, first, n in plan:
        if not path.exists():
            _write_shard(path, first, n, pool)


def data_dir(work: Path, n: int) -> Path:
    """A folder of hard links to the first n / 10,000 training shards and the held-out ones
    (symbolic links would lead out of the data folder, which the reader refuses)."""
    d = work / f"n{n}"
    d.mkdir(exist_ok=True)
    names = [f"train-{s:04d}.tar" for s in range(n // PER_SHARD)] + ["val-0000.tar", "test-0000.tar"]
    for name in names:
        link = d / name
        if not link.exists():
            os.link(work / "shards" / name, link)
    return d


def config(work: Path, extra: list[str] = ()):
    from crossalign.config import load_config

    return load_config(None, ["train.batch_size=4096", "train.tensorboard=false", "runtime.num_workers=0",
                              f"cache.dir={work / 'cache'}", "data.shard_images=reference", *extra])


# ---- stages (each in its own process) ------------------------------------------------------

def stage_read(work: Path, n: int) -> dict:
    from crossalign.config import DataConfig
    from crossalign.data.readers.shards import read_webdataset

    d = data_dir(work, n)
    shards = sorted(d.glob("train-*.tar"))
    cfg = DataConfig(extract_dir=str(work / "extracted"))

    def tar_loop():
        for shard in shards:
            with tarfile.open(shard, mode="r|*") as tf:
                for m in tf:
                    if m.isfile():
                        tf.extractfile(m).read()

    def ours():
        return read_webdataset(d, cfg)

    tar_loop(), ours()  # warm
    peak = Peak()
    t0 = time.perf_counter()
    table = ours()
    t = time.perf_counter() - t0
    mem = peak.stop()
    t0 = time.perf_counter()
    tar_loop()
    t_tar = time.perf_counter() - t0
    written = sum(1 for _ in (work / "extracted").rglob("*")) if (work / "extracted").exists() else 0
    return {"seconds": t, "rss": mem, "rows": len(table), "tar_seconds": t_tar, "files_written": written}


def _towers(work: Path):
    from crossalign.config import logit_start
    from crossalign.models.dual import build_model

    cfg = config(work)
    return build_model(cfg.model, logit_start(cfg)), cfg


def stage_extract(work: Path, n: int) -> dict:
    import shutil

    import torch

    from crossalign.config import DataConfig
    from crossalign.data.readers.shards import read_webdataset
    from crossalign.embed.towers import image_features

    torch.set_num_threads(2)
    table = read_webdataset(data_dir(work, PER_SHARD), DataConfig())
    model, _ = _towers(work)
    paths = list(dict.fromkeys(table.select("train").image_path))[:n]
    cache = work / f"cache-extract-{n}"
    shutil.rmtree(cache, ignore_errors=True)  # an empty store: every image is computed
    peak = Peak()
    t0 = time.perf_counter()
    out = image_features(model.image_tower, paths, cache, batch_size=64, progress=False, workers=1)
    t = time.perf_counter() - t0
    return {"seconds": t, "rss": peak.stop(), "rows": len(out.feats)}


def stage_fill(work: Path, n: int) -> dict:
    import numpy as np

    from crossalign.config import DataConfig, default_cache_dir
    from crossalign.data.members import source_hash
    from crossalign.data.readers.shards import read_webdataset
    from crossalign.features import FeatureCache, text_key, tower_fingerprint

    model, cfg = _towers(work)
    root = default_cache_dir(cfg.cache)
    img_t, txt_t = model.image_tower, model.text_tower
    images = FeatureCache(root, tower_fingerprint(img_t, img_t.data_config))
    texts = FeatureCache(root, tower_fingerprint(txt_t, txt_t.preprocess_config()))
    table = read_webdataset(data_dir(work, n), DataConfig())
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    paths, caps = list(dict.fromkeys(table.image_path)), list(dict.fromkeys(table.caption))
    for cache, keys, width, scale in ((images, None, img_t.width, 0.5), (texts, None, txt_t.width, 0.1)):
        items = paths if cache is images else caps
        for s in range(0, len(items), 16384):
            part = items[s:s + 16384]
            keys = [source_hash(p) for p in part] if cache is images else [text_key(c) for c in part]
            todo = set(cache.missing(keys))
            keep = [k for k in keys if k in todo]
            if keep:
                x = rng.standard_normal((len(keep), width), dtype=np.float32) * scale
                cache.put(keep, np.abs(x) if cache is images else x)
    return {"seconds": time.perf_counter() - t0, "rss": 0, "rows": len(paths)}


class _NullLogger:
    epochs: list = []  # the history a mid-epoch resume point records

    def step(self, row):
        pass

    def flush_steps(self):
        pass


def stage_train(work: Path, n: int) -> dict:
    import torch

    from crossalign.data.prepare import prepare_table
    from crossalign.distributed import DistInfo
    from crossalign.train.engine import run_engine

    torch.set_num_threads(2)
    cfg = config(work)
    peak = Peak()
    t0 = time.perf_counter()
    table, problems = prepare_table(data_dir(work, n), cfg.data, quiet=True)
    eng = run_engine(work / f"run-{n}", cfg, table, problems, DistInfo(), progress=False)
    t_setup = time.perf_counter() - t0
    rss_setup = peak.peak
    peak.reset()
    t0 = time.perf_counter()
    loss = eng.train_epoch(_NullLogger(), eng.gen.get_state())
    t_epoch = time.perf_counter() - t0
    rss_epoch = peak.stop()
    return {"seconds": t_epoch, "rss": rss_epoch, "rows": len(eng.rows), "setup_seconds": t_setup,
            "setup_rss": max(rss_setup, rss_epoch), "steps": eng.steps_per_epoch(), "loss": loss}


def _cli(args: list[str]) -> None:
    from crossalign.cli.main import main

    code = main(["-q", *args])
    if code != 0:
        raise SystemExit(f"crossalign {' '.join(args)}: exit {code}")


def _model_run(work: Path) -> Path:
    """A run folder of the default recipe (one epoch at 10k): the heads embed and index use."""
    run = work / "model-run"
    if not (run / "summary.json").exists():
        cfg_sets = ["train.epochs=1", "train.batch_size=4096", "train.tensorboard=false",
                    f"cache.dir={work / 'cache'}"]
        _cli(["train", "--data", str(data_dir(work, PER_SHARD)), "--out", str(run),
              *[a for s in cfg_sets for a in ("--set", s)]])
    return run


def stage_embed(work: Path, n: int) -> dict:
    import shutil

    run = _model_run(work)
    out = work / f"emb-{n}"
    shutil.rmtree(out, ignore_errors=True)
    peak = Peak()
    t0 = time.perf_counter()
    _cli(["embed", str(run), "--data", str(data_dir(work, n)), "--out", str(out)])  # the run's cache
    return {"seconds": time.perf_counter() - t0, "rss": peak.stop(), "rows": n}


def stage_index(work: Path, n: int) -> dict:
    import shutil

    run = _model_run(work)
    out = work / f"index-{n}"
    shutil.rmtree(out, ignore_errors=True)
    peak = Peak()
    t0 = time.perf_counter()
    # exact search at every size, so the growth compares one kind of index
    _cli(["index", str(run), "--from-embeddings", str(work / f"emb-{n}"), "--out", str(out), "--index-type", "flat"])
    return {"seconds": time.perf_counter() - t0, "rss": peak.stop(), "rows": n}


def stage_eval(work: Path, n: int) -> dict:
    import numpy as np
    import torch

    from crossalign.embed.partitions import list_partitions, read_partition
    from crossalign.evaluate.retrieval import retrieval_metrics

    torch.set_num_threads(2)
    # the partitions of the smallest measured size that holds n pairs
    sizes = sorted(int(d.name.split("-")[1]) for d in work.glob("emb-*") if d.is_dir())
    parts = [read_partition(f) for f in list_partitions(work / f"emb-{next(s for s in sizes if s >= n)}")]
    img = np.concatenate([p.image_emb for p in parts])[:n]
    txt = np.concatenate([p.text_emb for p in parts])
    offsets = np.cumsum([0] + [len(p.image_emb) for p in parts])
    t2i = np.concatenate([[off + c["image"] for c in p.captions] for p, off in zip(parts, offsets)])
    keep = t2i < n  # the captions of the first n images
    txt, t2i = txt[keep], t2i[keep]
    del parts
    peak = Peak()
    t0 = time.perf_counter()
    m = retrieval_metrics(img, txt, t2i)
    return {"seconds": time.perf_counter() - t0, "rss": peak.stop(), "rows": n,
            "t2i_R@1": m.get("t2i_R@1")}


STAGES = {"read": stage_read, "extract": stage_extract, "fill": stage_fill, "train": stage_train,
          "embed": stage_embed, "index": stage_index, "eval": stage_eval}


def run_stage(work: Path, stage: str, n: int) -> dict:
    done = work / "results.json"
    saved = json.loads(done.read_text()) if done.exists() else {}
    if f"{stage}:{n}" in saved:  # measured by an earlier invocation (delete the file to redo)
        out = saved[f"{stage}:{n}"]
        print(f"  {stage:<8} {n:>9,}  {out['seconds']:9.1f} s  (measured before)", flush=True)
        return out
    p = subprocess.run([sys.executable, __file__, "--work", str(work), "--stage", stage, "--n", str(n)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"stage {stage} at {n}: exit {p.returncode}\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    saved[f"{stage}:{n}"] = out
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    os.replace(tmp, done)
    print(f"  {stage:<8} {n:>9,}  {out['seconds']:9.1f} s  {out['rss'] / 2**20:8.0f} MB RssAnon  "
          f"{json.dumps({k: v for k, v in out.items() if k not in ('seconds', 'rss')})}", flush=True)
    return out


def exponent(a: tuple[int, float], b: tuple[int, float]) -> float:
    return math.log(b[1] / a[1]) / math.log(b[0] / a[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, type=Path, help="a folder for shards, stores and runs")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--extract", default="1000,4000")
    p.add_argument("--eval", default="10000,100000")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = args.work.resolve()
    if args.stage:
        print(json.dumps(STAGES[args.stage](work, args.n)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    extract = [int(s) for s in args.extract.split(",") if s]
    evals = [int(s) for s in args.eval.split(",") if s]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make(work, max(sizes))
    print(f"shards written in {time.perf_counter() - t0:.0f} s", flush=True)
    res: dict[str, dict[int, dict]] = {}
    for n in extract:
        res.setdefault("extract", {})[n] = run_stage(work, "extract", n)
    res["fill"] = {max(sizes): run_stage(work, "fill", max(sizes))}
    for n in sizes:
        for stage in ("read", "train", "embed", "index"):
            res.setdefault(stage, {})[n] = run_stage(work, stage, n)
    for n in evals:
        res.setdefault("eval", {})[n] = run_stage(work, "eval", n)
    print("\nstage      pairs      seconds   peak RssAnon MB")
    for stage, by_n in res.items():
        for n, r in by_n.items():
            print(f"{stage:<8} {n:>9,} {r['seconds']:10.1f} {r['rss'] / 2**20:12.0f}")
            if stage == "train":
                print(f"{'setup':<8} {n:>9,} {r['setup_seconds']:10.1f} {r['setup_rss'] / 2**20:12.0f}")
    print("\ngrowth exponents (smallest to largest size measured):")
    for stage, by_n in res.items():
        if len(by_n) < 2:
            continue
        ns = sorted(by_n)
        pts = [(n, by_n[n]["seconds"]) for n in ns]
        line = f"  {stage:<8} time {exponent(pts[0], pts[-1]):.2f}"
        if stage == "train":
            setup = [(n, by_n[n]["setup_seconds"]) for n in ns]
            line += f"  (setup {exponent(setup[0], setup[-1]):.2f})"
        if stage == "read":
            tar = [(n, by_n[n]["tar_seconds"]) for n in ns]
            line += f"  (tarfile loop {exponent(tar[0], tar[-1]):.2f}; read/tar rate at {ns[-1]:,}: " \
                    f"{by_n[ns[-1]]['tar_seconds'] / by_n[ns[-1]]['seconds']:.2f})"
        print(line)
    if "train" in res and len(res["train"]) > 1:
        ns = sorted(res["train"])
        small, big = res["train"][ns[0]], res["train"][ns[-1]]
        print(f"\nepoch at {ns[-1]:,} / ({ns[-1] // ns[0]} x the epoch at {ns[0]:,}): "
              f"{big['seconds'] / (ns[-1] / ns[0] * small['seconds']):.2f} (target <= 1.2); "
              f"peak RssAnon in that epoch {big['rss'] / 2**30:.2f} GiB (target <= 2)")
        # an epoch drops its last partial batch: per step (per pair trained) the sizes compare alike
        print(f"seconds per step of 4096 pairs: {small['seconds'] / small['steps']:.3f} at {ns[0]:,} "
              f"({small['steps']} steps), {big['seconds'] / big['steps']:.3f} at {ns[-1]:,} ({big['steps']} steps): "
              f"ratio {big['seconds'] / big['steps'] / (small['seconds'] / small['steps']):.2f}")


if __name__ == "__main__":
    main()
