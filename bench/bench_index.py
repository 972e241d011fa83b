"""Latency and recall@10 of the index types, on random vectors and on a run's Flickr8k embeddings.

Part 1 (``random``): ``--n`` random unit vectors of ``--dim`` (default 1,000,000 x 256) and
``--queries`` queries, random or noisy copies of base vectors (``--noise``). Exact (flat) search
gives the truth; for HNSW each
``efSearch`` in ``--ef`` is timed (one query at a time, p50 and p99) with its recall@10, and
the smallest one reaching recall@10 >= 0.95 is named. Target: p50 <= 5 ms at recall@10 >= 0.95.

Part 2 (``flickr``, with ``--run RUN --data DIR``): the index of the data's ``--split`` (test by
default) is built twice with the run's model (the second build reads a warm feature cache and
is the build time reported); then recall@10 of HNSW and IVF-PQ against exact search, for
text -> image (every caption as a query over the images) and image -> text (every image over the
captions), both straight from FAISS and through ``Index.search_vector`` (candidates re-scored
exactly against the stored vectors, as searches do).

    python bench/bench_index.py --part random
    python bench/bench_index.py --part flickr --run runs/flickr --data ../shared/data/flickr8k
    python bench/bench_index.py --part random --n 20000 --queries 50 --ef 16,64   # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _unit(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):  # built in slices: no float64 temporaries of the full size
        part = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        out[s:s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def _recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top ``k`` found in the returned top ``k``."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def _timed_search(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[n_queries, k]`` and per-query latency in ms, one query at a time."""
    rows, ms = np.empty((len(queries), k), np.int64), np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, r = index.search(q[None, :], k)
        ms[i] = (time.perf_counter() - t0) * 1000
        rows[i] = r[0]
    return rows, ms


def _queries(rng: np.random.Generator, base: np.ndarray, n: int, noise: float) -> np.ndarray:
    """Random unit queries (``noise`` 0), or noisy copies of random base vectors: a near
    neighbour exists, as for a real query, at cosine about 1 / sqrt(1 + noise^2)."""
    if noise == 0:
        return _unit(rng, n, base.shape[1])
    src = base[rng.choice(len(base), n, replace=False)]
    q = src + rng.standard_normal(src.shape, dtype=np.float32) * np.float32(noise / np.sqrt(base.shape[1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _hnsw_sweep(hnsw, queries: np.ndarray, truth: np.ndarray, efs: list[int]) -> None:
    chosen = None
    for ef in efs:
        hnsw.hnsw.efSearch = ef
        rows, ms = _timed_search(hnsw, queries)
        rec, p50 = _recall(rows, truth), np.percentile(ms, 50)
        print(f"    hnsw efSearch {ef:4d}  p50 {p50:7.2f} ms  p99 {np.percentile(ms, 99):7.2f} ms  "
              f"recall@10 {rec:.3f}")
        if chosen is None and rec >= 0.95:
            chosen = (ef, p50)
    if chosen:
        verdict = "meets" if chosen[1] <= 5 else "misses"
        print(f"    smallest efSearch with recall@10 >= 0.95: {chosen[0]} (p50 {chosen[1]:.2f} ms, "
              f"{verdict} the 5 ms target)")
    else:
        print("    no efSearch tried reached recall@10 0.95; try larger --ef values")


def part_random(n: int, dim: int, n_queries: int, efs: list[int], noises: list[float], seed: int,
                threads: int) -> None:
    import faiss

    from crossalign.index.store import HNSW_EF_CONSTRUCTION, HNSW_M

    rng = np.random.default_rng(seed)
    base = _unit(rng, n, dim)
    print(f"random: {n:,} x {dim} unit vectors, {n_queries} queries one at a time")
    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    t0 = time.perf_counter()
    hnsw = faiss.index_factory(dim, f"HNSW{HNSW_M}", faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    hnsw.add(base)
    print(f"  hnsw built in {time.perf_counter() - t0:.1f} s (M {HNSW_M}, efConstruction {HNSW_EF_CONSTRUCTION}, "
          f"{faiss.omp_get_max_threads()} threads)")
    if threads > 0:
        faiss.omp_set_num_threads(threads)  # searches are timed with this many
    print(f"  searches with {faiss.omp_get_max_threads()} FAISS threads")
    for noise in noises:
        queries = _queries(rng, base, n_queries, noise)
        _, truth = flat.search(queries, 10)  # batched: the ground truth
        _, ms = _timed_search(flat, queries)
        kind = "random queries" if noise == 0 else f"queries = base vectors + noise of norm {noise}"
        print(f"  {kind}")
        print(f"    flat               p50 {np.percentile(ms, 50):7.2f} ms  p99 {np.percentile(ms, 99):7.2f} ms"
              f"  recall@10 1.000")
        _hnsw_sweep(hnsw, queries, truth, efs)


def _build_twice(run: str, data: str, split: str, out: Path) -> tuple[float, float]:
    from crossalign.index import build_index

    t0 = time.perf_counter()
    build_index(run, out / "cold", data=data, split=split, index_type="flat", progress=False)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(run, out / "warm", data=data, split=split, index_type="flat", progress=False)
    return cold, time.perf_counter() - t0


def _recalls(root: Path, image_vecs: np.ndarray, caption_vecs: np.ndarray, kind: str) -> dict:
    """Recall@10 of index type ``kind`` against exact search, both directions, raw and re-scored."""
    from crossalign.index import open_index
    from crossalign.index.store import IndexStore, write_version

    exact = IndexStore(root)
    records = exact.all_images()
    info = {k: exact.info[k] for k in ("run", "weights_hash", "dim")}
    out = root.parent / kind
    write_version(out, info, exact.sources, records, image_vecs, caption_vecs, kind)
    ix = open_index(out, model=False)
    res = {}
    for name, queries, target, truth_vecs in (("text->image", caption_vecs, "images", image_vecs),
                                              ("image->text", image_vecs, "captions", caption_vecs)):
        truth = np.argsort(-(queries @ truth_vecs.T), axis=1)[:, :10]  # rows of the exact top 10
        _, raw = ix.store.faiss[target].search(queries, 10)
        id_rows = ix.store.id_rows[target]
        rescored = np.array([[id_rows[h.id] for h in ix.search_vector(q, 10, target).hits] for q in queries])
        res[name] = (_recall(raw, truth), _recall(rescored, truth), ix.info["factory"][target])
    ix.close()
    return res


def part_flickr(run: str, data: str, split: str) -> None:
    from crossalign.errors import CrossalignError
    from crossalign.index.store import IndexStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        cold, warm = _build_twice(run, data, split, tmp)
        store = IndexStore(tmp / "warm")
        img, cap = np.asarray(store.vectors["images"]), np.asarray(store.vectors["captions"])
        print(f"flickr: {split} split, {len(img)} images, {len(cap)} captions")
        print(f"  index build: {cold:.1f} s first, {warm:.1f} s with a warm feature cache (model load included)")
        for kind in ("hnsw", "ivfpq"):
            try:
                recalls = _recalls(tmp / "warm", img, cap, kind)
            except CrossalignError as e:  # too few vectors for IVF-PQ
                print(f"  {kind:5s} skipped: {e}")
                continue
            for direction, (raw, rescored, factory) in recalls.items():
                print(f"  {kind:5s} {factory:18s} {direction}: recall@10 {raw:.3f} from FAISS, "
                      f"{rescored:.3f} re-scored")
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["random", "flickr", "both"], default="both")
    p.add_argument("--n", type=int, default=1_000_000, help="random vectors (default 1,000,000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", default="16,32,64,128,256,512,1024", help="HNSW efSearch values to try")
    p.add_argument("--noise", default="0,1", help="query kinds: 0 = random queries, x = noisy copies of "
                                                 "base vectors (noise norm x); comma-separated")
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS threads while searching (default 1: one query per request thread, as the "
                        "service runs; building uses all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", help="run folder (part flickr)")
    p.add_argument("--data", help="data folder, e.g. ../shared/data/flickr8k (part flickr)")
    p.add_argument("--split", default="test")
    args = p.parse_args()
    if args.part in ("random", "both"):
        part_random(args.n, args.dim, args.queries, [int(e) for e in args.ef.split(",")],
                    [float(x) for x in args.noise.split(",")], args.seed, args.threads)
    if args.part in ("flickr", "both"):
        if not (args.run and args.data):
            p.error("part flickr needs --run RUN --data DIR (or use --part random)")
        part_flickr(args.run, args.data, args.split)


if __name__ == "__main__":
    main()
