"""One training step of a trainable MiniLM at batch 1,024: plain, and with ``train.grad_cache``.

    python bench/bench_grad_cache.py --flickr ../shared/data/flickr8k --work /tmp/grad-cache \
        [--batch 1024] [--chunk 64] [--limit 400] [--steps 1] [--rounds 2] [--threads N] \
        [--malloc kept|system]

The first ``--limit`` images of the standard split (3:1:1, as ``bench/flickr8k.py --limit`` makes
them; 400 give 1,200 training captions), MiniLM trainable (``model.text.freeze=trainable``) beside
the frozen default image tower, whose features a first process extracts into the feature cache
under ``--work``. Then each case runs ``--rounds`` times, each time in a fresh process (the order
alternating from round to round, plain first): the engine is built, one untimed step of 64 captions
warms the kernels and the allocator, and ``--steps`` steps of ``--batch`` random training captions
each (forward, loss, backward, optimizer) are timed, in wall and CPU seconds, while a thread samples
the process's private memory (``RssAnon`` in ``/proc/self/status``) every 2 ms. Printed as JSON:
per case every step's seconds and the fastest, the peak ``RssAnon`` during the steps, ``RssAnon``
just before them and the process's ``ru_maxrss`` (the largest over its processes); then the ratios
cached / plain. ``--malloc kept`` (the default) sets glibc's malloc as ``crossalign train`` does
(freed blocks kept in the heap: ``crossalign.cli.main.keep_freed_memory``); ``system`` leaves
glibc's defaults, which hand large blocks back as they are freed. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flickr8k import _subset  # noqa: E402  (the grid's subset: the same folders)

MB = 2 ** 20


def _rss_anon() -> int:
    """This process's private resident memory in bytes (``RssAnon``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class _PeakSampler:
    """The highest ``RssAnon`` seen while the block runs, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_anon())
            time.sleep(self.every)

    def __enter__(self) -> "_PeakSampler":
        self.peak = _rss_anon()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())


def _engine(data: Path, work: Path, batch: int, chunk: int):
    from crossalign.config import load_config
    from crossalign.data.prepare import prepare_table
    from crossalign.distributed import DistInfo
    from crossalign.train.engine import run_engine

    cfg = load_config(None, ["model.text.freeze=trainable", f"train.batch_size={batch}",
                             f"train.grad_cache={chunk}", "train.tensorboard=false",
                             f"cache.dir={work / 'cache'}", "runtime.device=cpu"])
    table, problems = prepare_table(data, cfg.data)
    return run_engine(work / "run", cfg, table, problems, DistInfo(), progress=False)


def _case(data: Path, work: Path, batch: int, chunk: int, args) -> dict:
    """One process's figures: build, warm up, then time ``args.steps`` steps of ``batch`` captions."""
    import numpy as np
    import torch

    from crossalign.cli.main import keep_freed_memory

    if args.malloc == "kept" and not keep_freed_memory():
        raise SystemExit("--malloc kept needs glibc's malloc")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps
    eng = _engine(data, work, batch, chunk)
    eng.model.train()
    batches = [np.random.default_rng(k).permutation(eng.rows)[:batch] for k in range(steps)]
    eng._micro_step(batches[0][:64], epoch=1, sync=True)  # untimed: kernels and allocator warm up
    eng.opt.zero_grad(set_to_none=True)
    before = _rss_anon()
    seconds, cpu = [], []
    with _PeakSampler() as sampler:
        for k in range(steps):
            torch.manual_seed(k)
            t0, c0 = time.perf_counter(), time.process_time()
            eng._micro_step(batches[k], epoch=1, sync=True)
            eng._optimizer_step()
            seconds.append(round(time.perf_counter() - t0, 2))
            cpu.append(round(time.process_time() - c0, 2))
    return {"steps_s": seconds, "steps_cpu_s": cpu, "rss_anon_before_mb": round(before / MB),
            "rss_anon_peak_mb": round(sampler.peak / MB), "step_mb": round((sampler.peak - before) / MB),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _combined(runs: list[dict]) -> dict:
    """One case over its processes: every step's seconds, the fastest, the largest memory."""
    out = {"steps_s": [t for r in runs for t in r["steps_s"]],
           "steps_cpu_s": [t for r in runs for t in r["steps_cpu_s"]]}
    out["step_s"], out["step_cpu_s"] = min(out["steps_s"]), min(out["steps_cpu_s"])
    for key in ("rss_anon_before_mb", "rss_anon_peak_mb", "step_mb", "ru_maxrss_mb"):
        out[key] = max(r[key] for r in runs)
    return out


def _in_process(args, chunk: int, prepare: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--flickr", str(args.flickr), "--work", str(args.work),
           "--batch", str(args.batch), "--limit", str(args.limit), "--malloc", args.malloc,
           "--steps", str(args.steps), "--threads", str(args.threads), "--case", str(chunk)]
    done = subprocess.run(cmd + (["--prepare"] if prepare else []), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flickr", type=Path, required=True, help="the Flickr8k folder (captions.txt, splits/)")
    ap.add_argument("--work", type=Path, required=True, help="a folder for the subset, cache and runs")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--limit", type=int, default=400, help="images of the standard split to use")
    ap.add_argument("--malloc", choices=("kept", "system"), default="kept")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per process")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per case (the fastest step counts)")
    ap.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # one case, in this process
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # extract features only
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = _subset(args.flickr, args.work, args.limit)
    if args.case is not None:
        if args.prepare:
            _engine(data, args.work, args.batch, args.case)
            print(json.dumps({}))
        else:
            print(json.dumps(_case(data, args.work, args.batch, args.case, args)))
        return
    import torch

    _in_process(args, 0, prepare=True)  # the image features, into the cache both cases read
    runs: dict[int, list[dict]] = {0: [], args.chunk: []}
    for r in range(args.rounds):  # the order alternates, so a busy spell does not pick one case
        for chunk in ((0, args.chunk) if r % 2 == 0 else (args.chunk, 0)):
            runs[chunk].append(_in_process(args, chunk))
    plain, cached = _combined(runs[0]), _combined(runs[args.chunk])
    print(json.dumps({
        "batch": args.batch, "chunk": args.chunk, "malloc": args.malloc,
        "torch_threads": args.threads or torch.get_num_threads(), "plain": plain, "cached": cached,
        "ratios": {"rss_anon_peak": round(cached["rss_anon_peak_mb"] / plain["rss_anon_peak_mb"], 3),
                   "step_mb": round(cached["step_mb"] / max(plain["step_mb"], 1), 3),
                   "ru_maxrss": round(cached["ru_maxrss_mb"] / plain["ru_maxrss_mb"], 3),
                   "time": round(cached["step_s"] / plain["step_s"], 3),
                   "cpu_time": round(cached["step_cpu_s"] / plain["step_cpu_s"], 3)}}, indent=2))


if __name__ == "__main__":
    main()
