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
    python bench/bench_index.py --part realistic --index INDEX   # INDEX: built by crossalign index

Part 3 (``realistic``, with ``--index INDEX`` of a trained run over a real data set): mixtures of
per-cluster Gaussians are fitted to the index's image vectors and, separately, to its caption
vectors (``realistic_vectors.py``); the fit is checked against the real vectors (tightness of
the clusters, each query's best cross-modal score). Then ``--n`` (1,000,000) image-like vectors
get an HNSW index and ``--n-ivf`` (10,000,000) an IVF-PQ one, each built and tuned to recall@10
0.95 as ``crossalign index`` does (the same factory strings, training sample and
:func:`crossalign.index.recall.set_recall` on held queries), and the same again with caption-like
vectors as the base. Fresh text-like queries over the image-like base (text -> image) and
image-like queries over the caption-like base (image -> text) are answered one at a time on one
thread, as a search does (FAISS candidates re-scored against the stored vectors, float16 and
memory-mapped for IVF-PQ), in a fresh process that reports its peak resident memory.
Targets: 1M HNSW recall@10 >= 0.95 at p50 <= 2 ms; 10M IVF-PQ recall@10 >= 0.95 at p50 <= 20 ms
and <= 4 GB resident.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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
    from crossalign.index.build import build_index

    t0 = time.perf_counter()
    build_index(run, out / "cold", data=data, split=split, index_type="flat", progress=False)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(run, out / "warm", data=data, split=split, index_type="flat", progress=False)
    return cold, time.perf_counter() - t0


def _recalls(root: Path, image_vecs: np.ndarray, caption_vecs: np.ndarray, kind: str) -> dict:
    """Recall@10 of index type ``kind`` against exact search, both directions, raw and re-scored."""
    from crossalign.index.search import open_index
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


def _vm(key: str) -> float:
    """A figure of this process from /proc/self/status, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def _build_streamed(mix, n: int, kind: str, out: Path, seed: int):
    """An index of ``kind`` over ``n`` vectors drawn from ``mix``, built as ``crossalign index``
    builds one (factory string, training sample), with the stored vectors written to
    ``out/vectors.npy`` in the index's dtype a chunk at a time; returns (index, stored)."""
    import faiss

    import realistic_vectors as rv
    from crossalign.index.store import HNSW_EF_CONSTRUCTION, factory_string

    dtype = np.float16 if kind == "ivfpq" else np.float32
    stored = np.lib.format.open_memmap(out / "vectors.npy", mode="w+", dtype=dtype, shape=(n, mix.dim))
    index = faiss.index_factory(mix.dim, factory_string(kind, n, mix.dim), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:  # the build's training sample: 100,000 of the vectors (these are drawn alike)
        index.train(rv.draw_all(mix, min(n, 100_000), seed + 7))
    s = 0
    for part in rv.draw(mix, n, seed):
        stored[s:s + len(part)] = part
        index.add(part)
        s += len(part)
    stored.flush()
    return index, stored


def _realistic_case(name: str, base_mix, query_mix, n: int, kind: str, n_queries: int, seed: int,
                    tmp: Path) -> None:
    import faiss

    import realistic_vectors as rv
    from crossalign.index.store import _tuning_queries, factory_string
    from crossalign.index.recall import exact_top, set_recall

    out = tmp / f"{kind}-{name.replace(' ', '').replace('->', '-')}"
    out.mkdir()
    t0 = time.perf_counter()
    index, stored = _build_streamed(base_mix, n, kind, out, seed)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    # held queries as a build tunes on: the other modality's vectors (fresh draws here) and the
    # base's own
    held, groups = _tuning_queries(stored, rv.draw_all(query_mix, 400, seed + 1))
    tuned = set_recall(index, stored, held, groups=groups)
    tuned_s = time.perf_counter() - t0
    queries = rv.draw_all(query_mix, n_queries, seed + 2)  # never seen by the tuning
    truth = exact_top(stored, queries, 10)
    faiss.write_index(index, str(out / "index.faiss"))
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", truth)
    (out / "params.json").write_text(json.dumps(tuned.params))
    del index, stored
    print(f"  {kind} {factory_string(kind, n, base_mix.dim)} over {n:,} {name.split(' -> ')[1]}-like vectors: "
          f"built in {built:.0f} s, tuned in {tuned_s:.0f} s to {tuned.params} "
          f"(recall@10 of the held queries: {tuned.groups} on {tuned.queries})", flush=True)
    res = subprocess.run([sys.executable, __file__, "--part", "_measure", "--dir", str(out)],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"measuring {out} failed:\n{res.stderr}")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"    {name}: {n_queries} queries one at a time, 1 thread: p50 {m['p50']:.2f} ms  "
          f"p99 {m['p99']:.2f} ms  recall@10 {m['recall']:.3f}  peak resident {m['rss_gb']:.2f} GB "
          f"(of which the index and vectors {m['loaded_gb']:.2f} GB at load, libraries {m['base_gb']:.2f} GB; "
          f"at the end {m['anon_gb']:.2f} GB own memory + {m['file_gb']:.2f} GB of mapped files)",
          flush=True)
    shutil.rmtree(out, ignore_errors=True)


def measure(out: Path) -> None:
    """In a fresh process: load an index as a search does, answer the queries one at a time."""
    import faiss

    from crossalign.index.store import _open_vectors
    from crossalign.index.recall import apply_params, approximate_top, recall_at

    faiss.omp_set_num_threads(1)
    before = _vm("VmRSS")  # the interpreter and libraries, before the index
    index = faiss.read_index(str(out / "index.faiss"))
    stored = _open_vectors(out / "vectors.npy", str(np.load(out / "vectors.npy", mmap_mode="r").dtype))  # as an index opens it
    params = json.loads((out / "params.json").read_text())
    rerank = int(params.pop("rerank"))
    apply_params(index, params)
    loaded = _vm("VmRSS") - before
    queries, truth = np.load(out / "queries.npy"), np.load(out / "truth.npy")
    rows, ms = np.empty_like(truth), np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        r, _ = approximate_top(index, stored, q[None, :], 10, rerank)
        ms[i] = (time.perf_counter() - t0) * 1000
        rows[i] = r[0]
    peak = _vm("VmHWM")  # (ru_maxrss would count the parent's pages of before exec)
    anon, file = _vm("RssAnon"), _vm("RssFile")  # own memory, and pages of mapped files (reclaimable)
    print(json.dumps({"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
                      "recall": recall_at(rows, truth), "rss_gb": peak, "loaded_gb": loaded,
                      "base_gb": before, "anon_gb": anon, "file_gb": file}))


def part_realistic(index_dir: str, n: int, n_ivf: int, n_queries: int, clusters: int, seed: int,
                   kinds: list[str], directions: list[str] | None = None) -> None:
    import realistic_vectors as rv
    from crossalign.index.store import IndexStore

    store = IndexStore(index_dir)
    img = np.asarray(store.vectors["images"], np.float32)
    cap = np.asarray(store.vectors["captions"], np.float32)
    store.close()
    t0 = time.perf_counter()
    img_mix, cap_mix = rv.fit(img, clusters, seed), rv.fit(cap, clusters, seed)
    print(f"realistic: mixtures of {len(img_mix.weights)} / {len(cap_mix.weights)} Gaussians fitted to "
          f"{len(img):,} image and {len(cap):,} caption vectors of {index_dir} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    f = lambda t: " / ".join(f"{v:.3f}" for v in t)  # noqa: E731
    s_img, s_cap = rv.draw_all(img_mix, len(img), seed + 3), rv.draw_all(cap_mix, len(cap), seed + 4)
    print(f"  cosine to the nearest cluster centre, p10 / p50 / p90: images real {f(rv.profile(img_mix, img))}"
          f", drawn {f(rv.profile(img_mix, s_img))}; captions real {f(rv.profile(cap_mix, cap))}, "
          f"drawn {f(rv.profile(cap_mix, s_cap))}")
    print(f"  best score of a caption over the images, p10 / p50 / p90: real {f(rv.best_scores(cap, img))}, "
          f"drawn {f(rv.best_scores(s_cap, s_img))}")
    print(f"  best score of an image over the captions: real {f(rv.best_scores(img, cap))}, "
          f"drawn {f(rv.best_scores(s_img, s_cap))}")
    print(f"  best score of an image over the other images: real "
          f"{f(np.percentile(np.sort(img @ img.T, 1)[:, -2], [10, 50, 90]))}, drawn "
          f"{f(np.percentile(np.sort(s_img @ s_img.T, 1)[:, -2], [10, 50, 90]))}", flush=True)
    del s_img, s_cap
    tmp = Path(tempfile.mkdtemp(prefix="bench-realistic-"))
    try:
        for kind in kinds:
            size = n if kind == "hnsw" else n_ivf
            for name, base_mix, query_mix in (("text -> image", img_mix, cap_mix),
                                              ("image -> text", cap_mix, img_mix)):
                if directions and name.split(" ")[0] not in directions:
                    continue
                _realistic_case(name, base_mix, query_mix, size, kind, n_queries, seed, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["random", "flickr", "both", "realistic", "_measure"], default="both")
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
    p.add_argument("--index", help="an index of a trained run over a real data set (part realistic)")
    p.add_argument("--n-ivf", type=int, default=10_000_000, help="vectors of the IVF-PQ case (part realistic)")
    p.add_argument("--clusters", type=int, default=64, help="Gaussians fitted per modality (part realistic)")
    p.add_argument("--kinds", default="hnsw,ivfpq", help="index types of part realistic")
    p.add_argument("--directions", default="text,image",
                   help="part realistic: text (text -> image), image (image -> text) or both")
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part == "_measure":
        return measure(Path(args.dir))
    if args.part == "realistic":
        if not args.index:
            p.error("part realistic needs --index INDEX")
        return part_realistic(args.index, args.n, args.n_ivf, args.queries, args.clusters, args.seed,
                              args.kinds.split(","), args.directions.split(","))
    if args.part in ("random", "both"):
        part_random(args.n, args.dim, args.queries, [int(e) for e in args.ef.split(",")],
                    [float(x) for x in args.noise.split(",")], args.seed, args.threads)
    if args.part in ("flickr", "both"):
        if not (args.run and args.data):
            p.error("part flickr needs --run RUN --data DIR (or use --part random)")
        part_flickr(args.run, args.data, args.split)


if __name__ == "__main__":
    main()
