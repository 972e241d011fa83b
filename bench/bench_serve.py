"""A bounded load test of the search service on the loopback interface.

For each ``--workers`` count (default ``1,2``) it starts ``crossalign serve INDEX --workers N``
in a child process on a free port of 127.0.0.1, with a token (``CROSSALIGN_TOKEN``; every
request carries it; ``--no-token`` serves without one), waits for ``/health``, then:

1. load: ``--requests`` requests (default 2,000) from ``--concurrency`` clients at once
   (default 16): p50 / p99 latency, throughput and errors (any answer other than 200, or none).
   Queries are the index's own captions, each request a different text, ``k=10``; ``--mix`` also
   sends thumbnail and "more like this" requests;
2. one client, ``--single`` fresh queries in a row (default 300): the one-query latency;
3. one client asking one query ``--repeat`` times in a row (default 50): after its first answer
   the vector is cached;
4. memory: the proportional set size (PSS: shared pages split between the processes that map
   them) of the service's processes added up, and each worker's resident and private memory;
5. with ``--flood N`` (default 40, 0: off; only with one worker): N ``/explain`` requests at
   once, each a new text, while one client keeps searching: the searches' latency against
   step 2's, and how the explanations were answered and how soon the refused ones were.

``--rebuild FOLDER`` instead copies the index, serves the copy, and while one client searches
without pause (filtered by split and not, in turn) runs ``crossalign index RUN --out COPY
--add FOLDER``: it prints the answers other than 200 and the counts before and after.

    python bench/bench_serve.py --index INDEX
    python bench/bench_serve.py --index INDEX --rebuild NEW_IMAGES --run RUN
    python bench/bench_serve.py --index demo/index --requests 200 --concurrency 4 --workers 1   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _start(index: str, port: int, run: str | None, workers: int, token: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "crossalign", "-q", "serve", index, "--port", str(port),
           "--workers", str(workers)]
    if run:
        cmd += ["--run", run]
    env = {k: v for k, v in os.environ.items() if k != "CROSSALIGN_TOKEN"}
    if token:
        env["CROSSALIGN_TOKEN"] = token
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


async def _wait_healthy(client, base: str, proc: subprocess.Popen, timeout: float = 600) -> dict:
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
    for q in queries:
        roll = rng.random() if mix else 0.0
        if roll < 0.8:
            out.append(("/search", {"q": q, "k": 10}))
        elif roll < 0.9:
            out.append((f"/images/{int(rng.integers(0, n_images))}", {"size": 256}))
        else:
            out.append(("/search", {"like": int(rng.integers(0, n_images)), "k": 10}))
    return out


async def _load(base: str, requests: list[tuple[str, dict]], concurrency: int, headers: dict):
    """Latencies (ms), errors and wall seconds of ``requests`` sent by ``concurrency`` clients."""
    import httpx

    latencies, errors = [], []
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
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


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _memory(pid: int) -> dict[str, int]:
    """kB of Rss, Pss and private pages of one process (``/proc/PID/smaps_rollup``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def _memory_report(proc: subprocess.Popen) -> tuple[float, list[dict]]:
    """MB of PSS over the service's processes, and the memory of each process that serves."""
    per = []
    for pid in _tree(proc.pid):
        try:
            m = _memory(pid)
        except (OSError, KeyError):
            continue
        per.append({"pid": pid, **m})
    workers = [m for m in per if m["rss"] > 200_000]  # the supervisor and helpers hold far less
    return sum(m["pss"] for m in per) / 1024, workers


async def _flood(base: str, headers: dict, n: int, queries: list[str]) -> dict:
    """N explanations at once while one client searches; see the module docstring."""
    import httpx

    async with httpx.AsyncClient(timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=n + 4)) as client:
        hit = (await client.get(base + "/search", params={"q": queries[0], "k": 1})).json()["hits"][0]
        t0 = time.perf_counter()

        async def one(i):
            r = await client.get(base + "/explain", params={"id": hit["image_id"],
                                                            "q": f"{queries[i % len(queries)]} {i}"})
            return r.status_code, (time.perf_counter() - t0) * 1000

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        search_ms, began, k = [], [], 0
        while not all(t.done() for t in tasks):
            s0 = time.perf_counter()
            r = await client.get(base + "/search", params={"q": queries[(k + 7) % len(queries)], "k": 10})
            search_ms.append((time.perf_counter() - s0) * 1000 if r.status_code == 200 else float("inf"))
            began.append((s0 - t0) * 1000)
            k += 1
        answers = [t.result() for t in tasks]
    refused = [ms for status, ms in answers if status == 503]
    return {"search": np.array(search_ms), "began": np.array(began), "ok": sum(s == 200 for s, _ in answers),
            "refused": len(refused), "other": sum(s not in (200, 503) for s, _ in answers),
            "refused_ms": np.array(refused) if refused else np.array([np.nan])}


async def _one_service(args, workers: int, token: str | None) -> None:
    import httpx

    port = _free_port()
    base, headers = f"http://127.0.0.1:{port}", ({"Authorization": f"Bearer {token}"} if token else {})
    proc = _start(args.index, port, args.run, workers, token)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            health = await _wait_healthy(client, base, proc)
        queries = _queries(args.index, args.requests + args.single + 100, args.seed)
        reqs = _urls(queries[:args.requests], args.mix, max(1, health["images"]), args.seed)
        await _load(base, reqs[: args.concurrency * 4], args.concurrency, headers)  # warm-up
        lat, errors, wall = await _load(base, reqs, args.concurrency, headers)
        singles = [("/search", {"q": q, "k": 10}) for q in queries[args.requests:][:args.single]]
        one, one_errors, _ = await _load(base, singles, 1, headers)
        again = [("/search", {"q": "a fresh query nobody asked: two dogs in deep snow", "k": 10})]
        first, _, _ = await _load(base, again, 1, headers)
        rep, rep_errors, _ = await _load(base, again * args.repeat, 1, headers)
        pss, per_worker = _memory_report(proc)
        flood = (await _flood(base, headers, args.flood, queries[-100:])
                 if args.flood and workers == 1 else None)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\n== {workers} worker(s), {'token on' if token else 'no token'}: {args.index}: "
          f"{health['images']} images, {health['captions']} captions, FAISS "
          f"{health['index']['images']}, text queries through {health.get('text_runtime')}")
    print(f"{len(lat)} requests, concurrency {args.concurrency}{' (mixed)' if args.mix else ''}: "
          f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
          f"max {lat.max():.1f} ms, {len(lat) / wall:.1f} requests/s, errors {len(errors)}")
    print(f"{len(one)} fresh queries one after another: p50 {np.percentile(one, 50):.1f} ms, "
          f"p99 {np.percentile(one, 99):.1f} ms, errors {len(one_errors)}")
    print(f"one query asked {args.repeat} times in a row by one client: first {first[0]:.1f} ms, then "
          f"p50 {np.percentile(rep, 50):.1f} ms, p99 {np.percentile(rep, 99):.1f} ms, "
          f"errors {len(rep_errors)}")
    print(f"memory: PSS of all the service's processes {pss:.0f} MB; serving processes: "
          + ", ".join(f"RSS {m['rss'] / 1024:.0f} MB (private {m['private'] / 1024:.0f} MB)"
                      for m in per_worker))
    if flood is not None:
        idle = np.percentile(one, 50)
        s = flood["search"]
        print(f"explain flood of {args.flood}: {flood['ok']} explained, {flood['refused']} refused "
              f"(503; p50 {np.nanpercentile(flood['refused_ms'], 50):.0f} ms, max "
              f"{np.nanmax(flood['refused_ms']):.0f} ms after the flood began), {flood['other']} other; "
              f"{len(s)} searches meanwhile: p50 {np.percentile(s, 50):.1f} ms, max {s.max():.1f} ms "
              f"(bound 3 x idle p50 + 50 = {3 * idle + 50:.1f} ms; over it: {(s > 3 * idle + 50).sum()}, "
              f"begun at {', '.join(f'{b:.0f}' for b in flood['began'][s > 3 * idle + 50])} ms)")
    for e in sorted(set(errors))[:10]:
        print(f"  error: {e} (x{errors.count(e)})")


async def _rebuild(args, token: str | None) -> None:
    """Serve a copy of the index and rebuild it with --add while one client searches."""
    import httpx

    if not args.run:
        raise SystemExit("--rebuild needs --run RUN (the run that built the index)")
    work = Path(tempfile.mkdtemp(prefix="crossalign-rebuild-"))
    copy = work / "index"
    shutil.copytree(args.index, copy)
    port = _free_port()
    base, headers = f"http://127.0.0.1:{port}", ({"Authorization": f"Bearer {token}"} if token else {})
    proc = _start(str(copy), port, args.run, 1, token)
    statuses: dict[int, int] = {}
    try:
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            before = await _wait_healthy(client, base, proc)
            build = subprocess.Popen([sys.executable, "-m", "crossalign", "-q", "index", args.run,
                                      "--out", str(copy), "--add", args.rebuild],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            queries, k, t0 = _queries(args.index, 500, args.seed), 0, time.perf_counter()
            while build.poll() is None or k < 20:
                params = {"q": queries[k % len(queries)], "k": 10}
                if k % 2:
                    params["split"] = "train"
                r = await client.get(base + "/search", params=params)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                k += 1
            build_s = time.perf_counter() - t0
            if build.returncode != 0:
                raise SystemExit(f"the rebuild failed:\n{build.stderr.read()[-2000:]}")
            for _ in range(20):  # the next request after CURRENT changed opens the new version
                after = (await client.get(base + "/health")).json()
                if after["version"] != before["version"]:
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"rebuild with --add {args.rebuild} while searching ({build_s:.1f} s): {sum(statuses.values())} "
          f"searches, answers {dict(sorted(statuses.items()))}; images {before['images']} -> "
          f"{after['images']}, version {before['version']} -> {after['version']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="index folder written by 'crossalign index'")
    p.add_argument("--run", help="run folder (default: the one that built the index)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--single", type=int, default=300, help="fresh queries sent one at a time")
    p.add_argument("--mix", action="store_true", help="also thumbnails and 'more like this'")
    p.add_argument("--repeat", type=int, default=50, help="times one query is asked again")
    p.add_argument("--workers", default="1,2", help="worker counts to measure, in turn")
    p.add_argument("--flood", type=int, default=40, help="explanations at once (0: none)")
    p.add_argument("--no-token", action="store_true", help="serve without a token")
    p.add_argument("--rebuild", metavar="FOLDER", help="measure a rebuild that adds FOLDER instead")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    token = None if args.no_token else secrets.token_urlsafe(32)
    if args.rebuild:
        asyncio.run(_rebuild(args, token))
        return
    for workers in [int(w) for w in args.workers.split(",")]:
        asyncio.run(_one_service(args, workers, token))


if __name__ == "__main__":
    main()
