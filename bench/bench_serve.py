"""A bounded load test of the search service on the loopback interface.

Starts ``crossalign serve INDEX`` in a child process on a free port of 127.0.0.1, waits for
``/health``, then sends ``--requests`` requests (default 2,000) from ``--concurrency`` clients
at once (default 16) and prints p50 / p99 latency, throughput and the error count (any answer
other than 200, or no answer). Queries are the index's own captions (or generated phrases
for an index without captions), each request a different text, with ``k=10``; ``--mix`` also
sends thumbnail and "more like this" requests. Then one client asks one query ``--repeat`` times
(default 50) in a row: after its first answer the service has the query's vector cached.

    python bench/bench_serve.py --index demo/index
    python bench/bench_serve.py --index demo/index --requests 200 --concurrency 4     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queries(index: str, n: int, seed: int) -> list[str]:
    """``n`` query texts: captions of the index, or phrases built from shape words."""
    from crossalign.index.store import IndexStore

    store = IndexStore(index)
    texts = [c.text for im in store.all_images() for c in im.captions]
    store.close()
    rng = np.random.default_rng(seed)
    if not texts:
        words = ["red", "blue", "green", "circle", "square", "triangle", "large", "small", "on grass"]
        texts = [" ".join(rng.choice(words, 3)) for _ in range(200)]
    return [texts[i] for i in rng.integers(0, len(texts), n)]


def _start(index: str, port: int, run: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "crossalign", "-q", "serve", index, "--port", str(port)]
    if run:
        cmd += ["--run", run]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def _wait_healthy(client, base: str, proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service stopped at start-up:\n{proc.stderr.read()[-3000:]}")
        try:
            r = await client.get(base + "/health")
            if r.status_code == 200:
                return r.json()
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the service did not answer /health in time")


def _urls(queries: list[str], mix: bool, n_images: int, seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for k, q in enumerate(queries):
        roll = rng.random() if mix else 0.0
        if roll < 0.8:
            out.append(("/search", {"q": q, "k": 10}))
        elif roll < 0.9:
            out.append((f"/images/{int(rng.integers(0, n_images))}", {"size": 256}))
        else:
            out.append(("/search", {"like": int(rng.integers(0, n_images)), "k": 10}))
    return out


async def _load(base: str, requests: list[tuple[str, dict]], concurrency: int):
    import httpx

    latencies, errors = [], []
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker():
            while not queue.empty():
                path, params = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await client.get(base + path, params=params)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {path}")
                except Exception as e:  # no answer at all counts as an error too
                    errors.append(f"{type(e).__name__} {path}")
                latencies.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return np.array(latencies), errors, time.perf_counter() - t0


async def _main(args) -> None:
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(args.index, port, args.run)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            health = await _wait_healthy(client, base, proc)
        queries = _queries(args.index, args.requests, args.seed)
        reqs = _urls(queries, args.mix, max(1, health["images"]), args.seed)
        await _load(base, reqs[: min(len(reqs), args.concurrency * 2)], args.concurrency)  # warm-up
        lat, errors, wall = await _load(base, reqs, args.concurrency)
        again = [("/search", {"q": "a fresh query nobody asked: two dogs in deep snow", "k": 10})]
        first, _, _ = await _load(base, again, 1)
        rep, rep_errors, _ = await _load(base, again * args.repeat, 1)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"index {args.index}: {health['images']} images, {health['captions']} captions, "
          f"FAISS {health['index']['images']}, text queries through {health.get('text_runtime')}")
    print(f"{len(lat)} requests, concurrency {args.concurrency}{' (mixed)' if args.mix else ''}: "
          f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
          f"max {lat.max():.1f} ms, {len(lat) / wall:.1f} requests/s, errors {len(errors)}")
    print(f"one query asked {args.repeat} times in a row by one client: first {first[0]:.1f} ms, then "
          f"p50 {np.percentile(rep, 50):.1f} ms, p99 {np.percentile(rep, 99):.1f} ms, errors {len(rep_errors)}")
    for e in sorted(set(errors))[:10]:
        print(f"  error: {e} (x{errors.count(e)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="index folder written by 'crossalign index'")
    p.add_argument("--run", help="run folder (default: the one that built the index)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--mix", action="store_true", help="also thumbnails and 'more like this'")
    p.add_argument("--repeat", type=int, default=50, help="times one query is asked again at the end")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
