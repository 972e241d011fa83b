"""SIGKILL while a file is half-written: between a temporary file's last byte and its rename.

Every result is written to a temporary file that is then renamed over its target
(``os.replace``); ``tests/_kill_runner.py`` kills the process at that rename, so the new
bytes are all on disk under the temporary name and the target still holds the old ones.

- A training killed there (in a resume point's commit, in ``model_best``) goes on with
  ``--resume`` from the last whole resume point and ends as an uninterrupted run; the
  checkpoint caught half-way is refused, never loaded.
- An index build killed after its new version's folder is in place but before ``CURRENT``
  names it leaves the previous version live; a reader searching all the while never
  sees an error or a wrong result.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crossalign
from crossalign.cli.main import main
from crossalign.errors import CheckpointError
from crossalign.train.state import load_resume_point

from _kill_runner import TIMING, TINY, cli, env, rows, sets

GUARD = 120  # seconds: a wait that lasts this long means a hang


def killed(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == -signal.SIGKILL, \
        f"{where}: not killed (exit {proc.returncode})\n{proc.stderr}"


def at_rename(path_part: str, call: int) -> dict:
    """Kill at the ``call``-th rename of a temporary file whose path holds ``path_part``."""
    return {"faults": [{"target": "os:replace", "path": path_part, "call": call, "action": "kill"}]}


def test_kills_inside_checkpoint_writes_then_resume(tmp_path, shapes_dir):
    run = tmp_path / "run"
    args = sets(TINY + ["train.epochs=2", f"cache.dir={tmp_path / 'cache'}"])

    # the second resume point is whole on disk, latest.json still names the first
    p = cli(at_rename("/resume/.latest.json.", 2), "train", "--data", str(shapes_dir),
            "--out", str(run), *args)
    killed(p, "resume point commit")
    (pending,) = (run / "resume").glob(".latest.json.*.tmp")
    assert json.loads(pending.read_text())["tag"] == "0001-0000008"  # its bytes were all written
    assert load_resume_point(run)["position"]["step"] == 4  # the previous point, whole

    # model_best's weights are in place, the JSON with their checksum is not
    p = cli(at_rename("/.model_best.json.", 1), "train", "--resume", str(run))
    killed(p, "model_best")
    assert (run / "model_best.safetensors").is_file()
    with pytest.raises(CheckpointError, match="model_best"):
        crossalign.load(run)  # refused, not loaded without its checksum
    assert crossalign.load(run, checkpoint="last") is not None  # the whole checkpoint beside it loads

    done = cli(None, "train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    ref = tmp_path / "ref"  # uninterrupted, on the features the killed runs left in the cache
    p = cli(None, "train", "--data", str(shapes_dir), "--out", str(ref), *args)
    assert p.returncode == 0, p.stderr
    assert rows(run / "metrics.csv") == rows(ref / "metrics.csv")
    assert rows(run / "steps.csv") == rows(ref / "steps.csv")
    best, want = (json.loads((r / "summary.json").read_text())["best_val"] for r in (run, ref))
    assert {k: v for k, v in best.items() if k not in TIMING} == \
        {k: v for k, v in want.items() if k not in TIMING}
    crossalign.load(run)  # model_best written again, whole


# the reader: opens the index afresh and searches it, again and again, until told to stop;
# every answer is checked against what an index of that version must hold
READER = r'''
import json, sys, time, traceback
from pathlib import Path
import numpy as np
from crossalign.index.search import open_index

index, stop, progress = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rng = np.random.default_rng(0)
versions, n = {}, 0
deadline = time.monotonic() + 120
try:
    while not stop.exists() and time.monotonic() < deadline:
        ix = open_index(index, model=False)
        try:
            store = ix.store
            for target in ("images", "captions"):
                q = rng.standard_normal(store.info["dim"]).astype(np.float32)
                q /= np.linalg.norm(q)
                k = min(5, len(store.row_ids[target]))
                found = ix.search_vector(q, k=k, target=target)
                # each call pins the version CURRENT names then; a build may switch it in between
                if found.version != store.version:
                    store = ix.store
                assert found.version == store.version
                hits = found.hits
                assert len(hits) == k, (target, len(hits), k)
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                assert all(-1.0001 <= s <= 1.0001 for s in scores)
                assert len({h.id for h in hits}) == k
                known = set(store.row_ids[target].tolist())
                assert all(h.id in known and Path(h.path).is_file() for h in hits)
            versions[store.version] = len(store)
        finally:
            ix.close()
        n += 1
        progress.write_text(str(n))
except BaseException:
    traceback.print_exc()
    sys.exit(1)
print(json.dumps({"searches": n, "versions": versions}))
'''


def wait_for_searches(progress: Path, more_than: int) -> int:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        n = int(progress.read_text() or 0) if progress.exists() else 0
        if n > more_than:
            return n
        time.sleep(0.01)
    raise AssertionError(f"the reader stopped searching (after {more_than})")


@pytest.fixture(scope="module")
def indexing(tmp_path_factory, shapes_dir) -> tuple[Path, Path, Path]:
    """A trained run and two folders of images: 20 indexed first, 10 added by a later build."""
    root = tmp_path_factory.mktemp("kills-index")
    run = root / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(run),
                 *sets(TINY + ["train.epochs=1", f"cache.dir={root / 'cache'}"])]) == 0
    images = sorted((shapes_dir / "images").iterdir())
    first, more = root / "images", root / "more"
    for folder, picked in ((first, images[:20]), (more, images[20:30])):
        folder.mkdir()
        for src in picked:
            (folder / src.name).write_bytes(src.read_bytes())
    return run, first, more


def test_kill_between_a_new_index_version_and_current(tmp_path, indexing):
    run, first, more = indexing
    index = tmp_path / "index"
    assert main(["-q", "index", str(run), "--images", str(first), "--out", str(index)]) == 0
    live = (index / "CURRENT").read_text().strip()

    script, stop, progress = tmp_path / "reader.py", tmp_path / "stop", tmp_path / "searches"
    script.write_text(READER)
    reader = subprocess.Popen([sys.executable, str(script), str(index), str(stop), str(progress)],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        n = wait_for_searches(progress, 0)
        switch = {"target": "crossalign.index.store:atomic_write_text", "path": "CURRENT",
                  "call": 1, "action": "kill"}
        p = cli({"faults": [switch]}, "index", str(run), "--out", str(index), "--add", str(more))
        killed(p, "index build before CURRENT")
        new = [d.name for d in index.iterdir() if d.is_dir() and d.name != live]
        assert len(new) == 1 and (index / new[0] / "meta.sqlite").is_file()  # renamed, whole
        assert (index / "CURRENT").read_text().strip() == live
        n = wait_for_searches(progress, n + 3)  # the reader went on searching the live version
        # the next build finishes what the killed one began, the reader still searching
        assert main(["-q", "index", str(run), "--out", str(index), "--add", str(more)]) == 0
        now = (index / "CURRENT").read_text().strip()
        assert now != live
        wait_for_searches(progress, n + 3)
        # the reader held the old version until its next search switched to the new one; then
        # the last to let go removed it
        deadline = time.monotonic() + GUARD
        while sorted(d.name for d in index.iterdir() if d.is_dir()) != [now]:
            assert time.monotonic() < deadline, sorted(d.name for d in index.iterdir())
            time.sleep(0.05)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=GUARD)
    assert reader.returncode == 0, err
    seen = json.loads(out.splitlines()[-1])
    assert seen["versions"] == {live: 20, now: 30}


def test_a_reader_opening_the_index_as_a_build_switches_versions(tmp_path, indexing, monkeypatch):
    """The reader has read CURRENT and is opening that version's files when a build makes
    another version live: the reader holds the version it is opening, so the build leaves it
    there, the reader opens it whole, and the version goes when the reader lets go of it."""
    import sqlite3

    from crossalign.index.store import IndexStore

    run, first, more = indexing
    index = tmp_path / "index"
    assert main(["-q", "index", str(run), "--images", str(first), "--out", str(index)]) == 0
    old = (index / "CURRENT").read_text().strip()
    real_connect, built = sqlite3.connect, []

    def connect(database, *args, **kw):
        if str(database).endswith("?mode=ro") and f"/{old}/" in str(database) and not built:
            built.append(True)  # the build below opens the old index too: let it
            assert main(["-q", "index", str(run), "--out", str(index), "--add", str(more)]) == 0
            assert (index / old).is_dir()  # held by the reader opening it
        return real_connect(database, *args, **kw)

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = IndexStore(index)
    try:
        assert built and store.version == old != (index / "CURRENT").read_text().strip()
        assert len(store) == 20 and len(store.all_images()) == 20
    finally:
        store.close()
    assert not (index / old).exists()  # the last to let go removed it
