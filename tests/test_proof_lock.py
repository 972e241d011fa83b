"""The feature cache's lock serialises writers of its index, and a rendezvous that is missed
fails loudly.

``FeatureCache._commit`` reads ``index.json``, adds its shard and writes it back, under an
``fcntl.flock`` on ``.lock``. Two writers that both read before either writes would lose
one shard. The tests below make the second writer arrive while the first is inside that
read-change-write for certain: the first waits there until the second is either inside
too (the lock did not hold it back: the proof fails) or blocked on the lock. Nothing waits
for a fixed time; every wait ends on an event, bounded only as a guard against a hang.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from crossalign import _io, features
from crossalign.features import FeatureCache

from _kill_runner import TINY, cli, sets

GUARD = 60  # seconds: a wait that lasts this long means a hang, not a slow machine


def index_entries(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())["shards"]


def test_two_writers_meet_inside_the_index_update_one_at_a_time(tmp_path, monkeypatch):
    first, second = "first", "second"
    role = threading.local()
    inside, most = [0], [0]
    count = threading.Lock()
    first_inside, second_arrived = threading.Event(), threading.Event()
    real_write, real_flock = _io.atomic_write_json, fcntl.flock

    def write_index(path, obj):  # between reading index.json and writing it back
        if Path(path).name == "index.json":
            with count:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            if role.name == first:
                first_inside.set()
                assert second_arrived.wait(GUARD), "the second writer never came"
            else:
                second_arrived.set()
        try:
            real_write(path, obj)
        finally:
            if Path(path).name == "index.json":
                with count:
                    inside[0] -= 1

    def flock(fd, op):
        if op == fcntl.LOCK_EX and getattr(role, "name", "") == second:
            second_arrived.set()  # about to wait for the lock the first writer holds
        return real_flock(fd, op)

    monkeypatch.setattr(_io, "atomic_write_json", write_index)
    monkeypatch.setattr(features, "atomic_write_json", write_index, raising=False)
    monkeypatch.setattr(features.fcntl, "flock", flock)
    errors: list[BaseException] = []

    def writer(name: str, keys: list[str]) -> None:
        role.name = name
        try:
            feats = np.full((len(keys), 3), len(name), np.float32)
            FeatureCache(tmp_path, "tower").put(keys, feats)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    a = threading.Thread(target=writer, args=(first, ["a0", "a1"]))
    a.start()
    assert first_inside.wait(GUARD), "the first writer never reached the index update"
    b = threading.Thread(target=writer, args=(second, ["b0"]))
    b.start()
    a.join(GUARD)
    b.join(GUARD)
    assert not a.is_alive() and not b.is_alive() and errors == []
    assert most[0] == 1, "two writers were inside the index update at once"
    listed = index_entries(tmp_path / "tower")
    assert sorted(e["rows"] for e in listed.values()) == [1, 2]  # neither shard was lost
    fresh = FeatureCache(tmp_path, "tower")
    assert fresh.missing(["a0", "a1", "b0"]) == []


# the same meeting between two processes: the lock is held across processes, as two
# trainings sharing one cache need
WRITER = r'''
import fcntl, json, sys, time
from pathlib import Path
import numpy as np
from crossalign import _io, features

root, name, sync = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_write, real_flock = _io.atomic_write_json, fcntl.flock

def wait_for(*paths):
    deadline = time.monotonic() + 60
    while not any(p.exists() for p in paths):
        if time.monotonic() > deadline:
            sys.exit(f"{name}: waited a minute for {[str(p) for p in paths]}")
        time.sleep(0.005)

def write_index(path, obj):
    if Path(path).name == "index.json":
        (sync / f"{name}-inside").touch()
        (sync / f"{name}-entered").touch()
        other = "second" if name == "first" else "first"
        if (sync / f"{other}-inside").exists():
            (sync / "overlap").touch()
        if name == "first":
            wait_for(sync / "second-entered", sync / "second-waiting")
    real_write(path, obj)
    if Path(path).name == "index.json":
        (sync / f"{name}-inside").unlink()

def flock(fd, op):
    if op == fcntl.LOCK_EX and name == "second":
        (sync / "second-waiting").touch()
    return real_flock(fd, op)

_io.atomic_write_json = features.atomic_write_json = write_index
features.fcntl.flock = flock
if name == "second":
    wait_for(sync / "first-entered")
keys = [f"{name}{i}" for i in range(3 if name == "first" else 1)]
features.FeatureCache(root, "tower").put(keys, np.ones((len(keys), 3), np.float32))
'''


def test_two_processes_meet_inside_the_index_update_one_at_a_time(tmp_path):
    sync = tmp_path / "sync"
    sync.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), name, str(sync)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("first", "second")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert not (sync / "overlap").exists(), "two writers were inside the index update at once"
    listed = index_entries(tmp_path / "tower")
    assert sorted(e["rows"] for e in listed.values()) == [1, 3]
    assert FeatureCache(tmp_path, "tower").missing(["first0", "first1", "first2", "second0"]) == []


def test_a_missed_rendezvous_stops_the_process_with_a_message(tmp_path, shapes_dir):
    """Two trainings meet before their first cache write; when the other never comes, the
    one waiting stops, naming what it waited for, instead of going on alone."""
    never = tmp_path / "ready-other"
    meet = {"target": "crossalign.features:FeatureCache.put", "call": 1, "action": "rendezvous",
            "mine": str(tmp_path / "ready-mine"), "other": str(never), "timeout": 0.5}
    p = cli({"faults": [meet]}, "train", "--data", str(shapes_dir), "--out", str(tmp_path / "run"),
            *sets(TINY + ["train.epochs=1", f"cache.dir={tmp_path / 'cache'}"]))
    assert p.returncode not in (0, 2), p.stderr  # not a success, nor a user's error
    assert str(never) in p.stderr and "did not appear" in p.stderr, p.stderr
    assert (tmp_path / "ready-mine").exists() and not (tmp_path / "run" / "summary.json").exists()
