"""Time and peak memory of chunked retrieval on random normalised vectors.

Each task runs in a fresh child process, so its peak resident memory (``ru_maxrss``)
is its own: the interpreter, torch, the random inputs and the blocks of scores.
Captions are noisy copies of their image, so the ranks are not all of one kind.

    python bench/bench_retrieval.py                      # 25,000 images x 125,000 captions, dim 256
    python bench/bench_retrieval.py --images 2000 --tasks metrics
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np

TASKS = ("metrics", "topk")


def _inputs(n_images: int, per_image: int, dim: int, noise_scale: float = 4.0, seed: int = 0):
    """Unit vectors ``[n_images, dim]`` and ``[n_images * per_image, dim]`` (float32), and the pairing.

    A caption is its image plus noise of norm about ``noise_scale``.
    """
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_images, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = np.repeat(np.arange(n_images), per_image)
    txt = np.empty((len(t2i), dim), dtype=np.float32)
    for s in range(0, len(t2i), 10_000):  # built in slices: no float64 or full-size temporaries
        noise = rng.standard_normal((len(t2i[s:s + 10_000]), dim), dtype=np.float32)
        part = img[t2i[s:s + 10_000]] + noise * np.float32(noise_scale / np.sqrt(dim))
        txt[s:s + 10_000] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return img, txt, t2i


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(task: str, args: dict, queue) -> None:
    import torch

    from crossalign.evaluate.retrieval import retrieval_metrics, retrieve

    img, txt, t2i = _inputs(args["images"], args["per_image"], args["dim"])
    before = _rss_mib()  # interpreter + torch + inputs
    t0 = time.perf_counter()
    if task == "metrics":
        m = retrieval_metrics(img, txt, t2i, max_bytes=args["max_bytes"])
        extra = {"t2i_R@1": round(m["t2i_R@1"], 2), "i2t_R@1": round(m["i2t_R@1"], 2)}
    else:
        res = retrieve(img, txt, t2i, k=args["k"], max_bytes=args["max_bytes"])
        extra = {"t2i_lists": list(res.t2i.indices.shape), "i2t_lists": list(res.i2t.indices.shape)}
    seconds = time.perf_counter() - t0
    queue.put({"task": task, "seconds": round(seconds, 1), "peak_rss_mib": round(_rss_mib()),
               "rss_before_task_mib": round(before),
               "added_by_task_mib": round(_rss_mib() - before), "torch_threads": torch.get_num_threads(), **extra})


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=25_000)
    p.add_argument("--per-image", type=int, default=5, help="captions per image (default 5)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10, help="top-K list length for the topk task")
    p.add_argument("--max-bytes", type=int, default=None, help="block bound (default: the library's)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {TASKS}")
    args = p.parse_args(argv)
    from crossalign.evaluate.retrieval import BLOCK_BYTES

    conf = {"images": args.images, "per_image": args.per_image, "dim": args.dim, "k": args.k,
            "max_bytes": args.max_bytes or BLOCK_BYTES}
    ctx = mp.get_context("spawn")
    results = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(task, conf, queue))
        proc.start()
        out = queue.get()
        proc.join()
        results.append({**out, "images": args.images, "captions": args.images * args.per_image, "dim": args.dim,
                        "block_mib": conf["max_bytes"] // 2**20})
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
