"""The feature store: float16 rows, rows read in batches, writers sharing one store,
writers killed at every point of a write, and caches of earlier versions moved in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossalign.config import CacheConfig, default_cache_dir
from crossalign.errors import ConfigError
from crossalign.features import FeatureCache, root_dtype


def unit_rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_float16_rows_equal_float32_ones_within_1e_3_cosine(tmp_path):
    # tower outputs as they come: unnormalised, of all sizes (Lite0's are 1280 wide)
    x = unit_rows(2000, 1280) * np.random.default_rng(1).uniform(0.01, 50, (2000, 1))
    keys = [f"k{i}" for i in range(len(x))]
    half, full = FeatureCache(tmp_path, "t"), FeatureCache(tmp_path / "float32", "t")
    assert (half.dtype, full.dtype) == ("float16", "float32")
    half.put(keys, x)
    full.put(keys, x)
    h, f = FeatureCache(tmp_path, "t").get(keys), FeatureCache(tmp_path / "float32", "t").get(keys)
    assert h.dtype == f.dtype == np.float32
    np.testing.assert_array_equal(f, x.astype(np.float32))  # float32 on request: exact
    assert (1 - cosine(h, f)).max() < 1e-3
    assert not np.array_equal(h, f)  # the half rows really are rounded


def test_cache_dtype_picks_its_own_tree_and_refuses_others(tmp_path):
    assert default_cache_dir(CacheConfig(dir=str(tmp_path))) == tmp_path
    assert default_cache_dir(CacheConfig(dir=str(tmp_path), dtype="float32")) == tmp_path / "float32"
    assert root_dtype(tmp_path / "float32") == "float32" and root_dtype(tmp_path) == "float16"
    with pytest.raises(ConfigError, match="cache.dtype must be one of float16, float32"):
        default_cache_dir(CacheConfig(dir=str(tmp_path), dtype="int8"))


def test_rows_are_read_when_indexed_in_any_order_across_segments(tmp_path):
    x = unit_rows(300, 16)
    keys = [f"k{i}" for i in range(300)]
    for lo, hi in ((0, 100), (100, 250), (250, 300)):  # three writers: three segment files
        FeatureCache(tmp_path, "t").put(keys[lo:hi], x[lo:hi])
    cache = FeatureCache(tmp_path, "t")
    assert len(cache.segments()) == 3 and len(cache) == 300
    order = np.random.default_rng(2).permutation(300)
    rows = cache.rows([keys[i] for i in order])
    want = x[order].astype(np.float16).astype(np.float32)
    assert rows.shape == (300, 16) and len(rows) == 300
    np.testing.assert_array_equal(rows[np.array([5, 0, 299, 5])], want[[5, 0, 299, 5]])
    np.testing.assert_array_equal(rows[10:20], want[10:20])
    np.testing.assert_array_equal(np.asarray(rows), want)
    np.testing.assert_array_equal(rows[7], want[7])
    # repeats, as a caption table has them, are found once each time they are asked for
    np.testing.assert_array_equal(cache.get(["k3", "k3", "k1"]), want[np.argsort(order)][[3, 3, 1]])
    with pytest.raises(KeyError, match="nope"):
        cache.rows(["k1", "nope"])


def test_a_later_put_of_a_key_replaces_it(tmp_path):
    cache = FeatureCache(tmp_path, "t")
    cache.put(["a", "b"], np.zeros((2, 4)))
    FeatureCache(tmp_path, "t").put(["b"], np.ones((1, 4)))
    np.testing.assert_array_equal(FeatureCache(tmp_path, "t").get(["a", "b"]), [[0] * 4, [1] * 4])
    assert len(FeatureCache(tmp_path, "t")) == 2


WRITER = r'''
import sys, time
from pathlib import Path
import numpy as np
from crossalign.features import FeatureCache

root, name, sync = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
other = "b" if name == "a" else "a"
(sync / name).touch()
deadline = time.monotonic() + 60
while not (sync / other).exists():  # both start writing together
    if time.monotonic() > deadline:
        sys.exit(f"{name}: the other writer never started")
    time.sleep(0.002)
cache = FeatureCache(root, "t")
for c in range(40):
    keys = [f"{name}{c}-{r}" for r in range(8)]
    cache.put(keys, np.full((8, 5), c + (100 if name == "b" else 0), np.float32))
'''


def test_two_writing_processes_lose_no_chunk_of_each_other(tmp_path):
    script, sync = tmp_path / "writer.py", tmp_path / "sync"
    script.write_text(WRITER)
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), n, str(sync)],
                              stderr=subprocess.PIPE, text=True) for n in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    cache = FeatureCache(tmp_path, "t")
    assert len(cache) == 2 * 40 * 8
    assert sorted(s["chunks"] for s in cache.segments()) == [40, 40]  # one segment each
    for name, base in (("a", 0), ("b", 100)):
        for c in (0, 17, 39):
            np.testing.assert_array_equal(cache.get([f"{name}{c}-{r}" for r in range(8)]),
                                          np.full((8, 5), c + base, np.float32))


KILLED = r'''
import os, signal, sys
from pathlib import Path
import numpy as np
from crossalign import features

root, where = Path(sys.argv[1]), sys.argv[2]
cache = features.FeatureCache(root, "t")
for c in range(2):
    cache.put([f"k{c}-{r}" for r in range(4)], np.full((4, 3), c, np.float32))

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "mid-bytes":  # half of the chunk's bytes written, then killed
    class Half:
        def __init__(self, f): self.f = f
        def __getattr__(self, a): return getattr(self.f, a)
        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2]); self.f.flush(); die()
    sid, f, rows, name = cache._out
    cache._out = (sid, Half(f), rows, name)
elif where == "before-listing":  # every byte on disk, nothing listed
    features.FeatureCache._commit = lambda *a, **k: die()
elif where == "mid-transaction":  # inside the SQLite transaction, some keys inserted
    real = cache._conn(write=True)
    class Conn:
        def __getattr__(self, a): return getattr(real, a)
        def executemany(self, sql, rows):
            if "entries" in sql:
                def some():
                    for i, r in enumerate(rows):
                        if i == 2:
                            die()
                        yield r
                return real.executemany(sql, some())
            return real.executemany(sql, rows)
    cache._db = Conn()
cache.put([f"k2-{r}" for r in range(4)], np.full((4, 3), 2, np.float32))
sys.exit("not killed")
'''


@pytest.mark.parametrize("where", ["mid-bytes", "before-listing", "mid-transaction"])
def test_a_writer_killed_mid_write_leaves_a_readable_store(tmp_path, where):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    p = subprocess.run([sys.executable, str(script), str(tmp_path), where], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    cache = FeatureCache(tmp_path, "t")
    done = [f"k{c}-{r}" for c in range(2) for r in range(4)]
    lost = [f"k2-{r}" for r in range(4)]
    assert cache.missing(done + lost) == lost  # the killed chunk is wholly absent, no part of it
    np.testing.assert_array_equal(cache.get(done), np.repeat([0, 1], 4)[:, None] * np.ones((1, 3)))
    cache.put(lost, np.full((4, 3), 2, np.float32))  # the next writer fills it in
    np.testing.assert_array_equal(FeatureCache(tmp_path, "t").get(lost), np.full((4, 3), 2))
