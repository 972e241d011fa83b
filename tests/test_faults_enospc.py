"""A full disk at each writer in turn, and a run folder that turns read-only mid-run.

Every result is written through :func:`crossalign._io.atomic_path`, which makes its
temporary file with ``tempfile.mkstemp``. :class:`Disk` takes over that one call: from the
chosen write on, the temporary file is a link to ``/dev/full``, so whichever library fills
it (Python's files, NumPy, safetensors, FAISS, SQLite, matplotlib) gets ``ENOSPC`` from the
kernel, as on a full disk; or the file cannot be made at all (``EROFS``), as in a folder
that became read-only (the tests run as root, which ``chmod`` does not stop).

Each case checks the promise of the README: one line on stderr naming the file (exit 2),
the files as they were when the disk filled (byte for byte, nothing half-written left), and
the command going on once there is room (``train --resume`` ends as an uninterrupted run).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from crossalign.cli.main import main
from crossalign.embed import towers as _towers

from _kill_runner import TIMING, TINY, rows, sets

DEV_FULL = "/dev/full"
REAL_MKSTEMP = tempfile.mkstemp
REAL_CHMOD = os.chmod


def _digest(p: Path) -> str:
    if p.name != "store.sqlite":
        return hashlib.sha256(p.read_bytes()).hexdigest()
    # a feature store's index: what it holds, not its pages (SQLite moves rows from its
    # write-ahead log into the file whenever the last connection closes)
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()


def digests(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root`` (temporary files and
    SQLite's log and shared-memory files aside)."""
    return {p.relative_to(root).as_posix(): _digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not p.name.endswith((".tmp", "-wal", "-shm"))}


def leftovers(root: Path) -> list[str]:
    """Temporary files and links a failed write left behind."""
    return [str(p) for p in root.rglob("*")
            if p.is_symlink() or (p.name.endswith(".tmp") and p.is_file())]


class Disk:
    """At the ``nth`` atomic write whose target matches ``pattern`` (relative to ``root``),
    the disk refuses. ``full``: that write's temporary file is made and fills on its first
    bytes. ``read-only``: that write goes through, and every file under ``root / ro_under``
    after it is refused.

    ``snapshot`` holds :func:`digests` of ``root`` at the moment the disk refused.
    """

    def __init__(self, monkeypatch, root: Path, pattern: str, nth: int = 1, how: str = "full",
                 ro_under: str = "") -> None:
        self.root, self.pattern, self.nth, self.how = root, pattern, nth, how
        self.ro_under = root / ro_under
        self.count, self.armed, self.hit = 0, False, None
        self.snapshot: dict[str, str] | None = None
        self.links: set[str] = set()
        assert os.path.exists(DEV_FULL), "this test needs Linux's /dev/full"
        monkeypatch.setattr(tempfile, "mkstemp", self.mkstemp)
        monkeypatch.setattr(os, "chmod", self.chmod)

    def _target(self, kw: dict) -> Path | None:
        prefix, folder = kw.get("prefix") or "", kw.get("dir")
        if folder is None or not prefix.startswith("."):
            return None
        return Path(folder) / prefix[1:-1]  # atomic_path: prefix=".NAME.", dir=its folder

    def _rel(self, target: Path) -> str | None:
        try:
            return target.relative_to(self.root).as_posix()
        except ValueError:
            return None

    def mkstemp(self, *args, **kw):
        target = self._target(kw)
        if self.armed and self.how == "read-only" and target is not None \
                and self.ro_under in (target.parent, *target.parent.parents):
            self._refused(target)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target.parent))
        rel = self._rel(target) if target is not None else None
        if rel is not None and fnmatch.fnmatch(rel, self.pattern):
            self.count += 1
            if self.count == self.nth:
                self.armed = True
                if self.how == "full":
                    return self._fill(target, *args, **kw)
        return REAL_MKSTEMP(*args, **kw)

    def _refused(self, target: Path) -> None:
        if self.snapshot is None:
            self.snapshot, self.hit = digests(self.root), target

    def _fill(self, target: Path, *args, **kw):
        self._refused(target)
        fd, tmp = REAL_MKSTEMP(*args, **kw)
        os.unlink(tmp)
        os.symlink(DEV_FULL, tmp)  # every byte written to it: ENOSPC from the kernel
        self.links.add(tmp)
        return fd, tmp

    def chmod(self, path, mode, *args, **kw):
        if str(path) in self.links:  # never change /dev/full itself
            return None
        return REAL_CHMOD(path, mode, *args, **kw)


def error_line(capsys, command: str) -> str:
    """The one line a refused write prints (warnings aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"crossalign {command}: error: "), lines[0]
    return lines[0]


def refused(disk: Disk, capsys, command: str, code: int) -> str:
    """Check exit 2, one line naming the file, earlier files byte-equal, nothing half-written."""
    assert disk.snapshot is not None, f"no write matched {disk.pattern} (call {disk.nth})"
    assert code == 2
    line = error_line(capsys, command)
    why = "No space left on device" if disk.how == "full" else "Read-only file system"
    assert why in line and str(disk.hit) in line and "cannot write" in line, line
    assert digests(disk.root) == disk.snapshot  # nothing changed after the disk refused
    assert leftovers(disk.root) == []
    return line


# ---- training: the feature cache, resume points, checkpoints and logs ---------------------

OVER = TINY + ["train.epochs=2"]


@pytest.fixture()
def small_shards(monkeypatch):
    """16 items per cache shard, so one extraction writes many shards and index updates."""

    monkeypatch.setattr(_towers, "SHARD", 16)


def train_args(root: Path, data: Path, out: str = "run") -> list[str]:
    return ["-q", "train", "--data", str(data), "--out", str(root / out),
            *sets(OVER + [f"cache.dir={root / 'cache'}"])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes_dir) -> Path:
    """A finished run for evaluate, index and report to read (none of them writes into it)."""

    root = tmp_path_factory.mktemp("enospc-ref")
    old, _towers.SHARD = _towers.SHARD, 16
    try:
        assert main(train_args(root, shapes_dir)) == 0
    finally:
        _towers.SHARD = old
    return root / "run"


def same_as_uninterrupted(root: Path, data: Path) -> None:
    """The resumed run's logs equal those of a run trained without a fault on the features the
    faulted one left in the cache (features computed in other batches may round apart)."""
    assert main(train_args(root, data, "uninterrupted")) == 0
    run, ref = root / "run", root / "uninterrupted"
    assert rows(run / "metrics.csv") == rows(ref / "metrics.csv")
    assert rows(run / "steps.csv") == rows(ref / "steps.csv")
    got, want = (json.loads((r / "summary.json").read_text())["best_val"] for r in (run, ref))
    assert {k: v for k, v in got.items() if k not in TIMING} == \
        {k: v for k, v in want.items() if k not in TIMING}


# (name, pattern of the file, which write of it fails)
TRAIN_WRITERS = [
    ("resume weights", "run/resume/model-*.safetensors", 2),
    ("resume state", "run/resume/state-*.safetensors", 2),
    ("resume commit", "run/resume/latest.json", 2),
    ("model_best", "run/model_best.safetensors", 1),
    ("model_best.json", "run/model_best.json", 1),
    ("model_last", "run/model_last.safetensors", 2),
    ("metrics.csv", "run/metrics.csv", 2),
    ("steps.csv", "run/steps.csv", 3),
    ("summary.json", "run/summary.json", 1),
]


@pytest.mark.parametrize("name, pattern, nth", TRAIN_WRITERS, ids=[w[0] for w in TRAIN_WRITERS])
def test_full_disk_in_training_then_resume(tmp_path, shapes_dir, small_shards, capsys, monkeypatch,
                                           name, pattern, nth):
    disk = Disk(monkeypatch, tmp_path, pattern, nth)
    refused(disk, capsys, "train", main(train_args(tmp_path, shapes_dir)))
    monkeypatch.undo()  # room again
    monkeypatch.setattr(_towers, "SHARD", 16)
    assert main(["-q", "train", "--resume", str(tmp_path / "run")]) == 0
    same_as_uninterrupted(tmp_path, shapes_dir)


class FullSegment:
    """A feature-store segment file whose ``nth`` chunk (and every later one) goes to
    ``/dev/full``: the kernel's ENOSPC, as on a full disk."""

    def __init__(self, f, nth: int, state: dict) -> None:
        self.f, self.nth, self.state = f, nth, state

    def __getattr__(self, name):
        return getattr(self.f, name)

    def write(self, data):
        self.state["writes"] += 1
        if self.state["writes"] >= self.nth:
            self.state["hit"] = self.state["hit"] or digests(self.state["root"])
            with open(DEV_FULL, "wb", buffering=0) as full:
                return full.write(bytes(data))  # raises ENOSPC
        return self.f.write(data)


@pytest.mark.parametrize("part", ["segment", "index"])
def test_full_disk_at_the_feature_store_then_resume(tmp_path, shapes_dir, small_shards, capsys,
                                                    monkeypatch, part):
    from crossalign import features

    state = {"writes": 0, "hit": None, "root": tmp_path}
    if part == "segment":
        real_open = features._open_segment
        monkeypatch.setattr(features, "_open_segment",
                            lambda path: FullSegment(real_open(path), 3, state))
        name = "seg-"
    else:  # SQLite's own full disk: the index may not grow past its pages after a few chunks
        real_store = features._open_store

        def small_store(path):
            db = real_store(path)
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages + 2}")
            return db

        monkeypatch.setattr(features, "_open_store", small_store)
        name = "store.sqlite"
    code = main(train_args(tmp_path, shapes_dir))
    assert code == 2
    line = error_line(capsys, "train")
    assert name in line and "cannot write" in line, line
    assert ("No space left on device" if part == "segment" else "full") in line, line
    if part == "segment":  # nothing listed after the refused chunk
        assert digests(tmp_path) == state["hit"]
    monkeypatch.undo()  # room again
    monkeypatch.setattr(_towers, "SHARD", 16)
    assert main(["-q", "train", "--resume", str(tmp_path / "run")]) == 0
    same_as_uninterrupted(tmp_path, shapes_dir)


def test_run_folder_turns_read_only_after_the_first_epoch(tmp_path, shapes_dir, small_shards,
                                                          capsys, monkeypatch):
    # metrics.csv is written once the first epoch is validated; from the next file on, every
    # file the run folder would take is refused
    disk = Disk(monkeypatch, tmp_path, "run/metrics.csv", 1, how="read-only", ro_under="run")
    refused(disk, capsys, "train", main(train_args(tmp_path, shapes_dir)))
    assert [r["epoch"] for r in rows(tmp_path / "run" / "metrics.csv")] == ["1"]
    monkeypatch.undo()
    monkeypatch.setattr(_towers, "SHARD", 16)
    assert main(["-q", "train", "--resume", str(tmp_path / "run")]) == 0
    same_as_uninterrupted(tmp_path, shapes_dir)


# ---- evaluate --json, the index and its CURRENT switch, the report -----------------------

def test_full_disk_at_evaluate_json(tmp_path, reference, capsys, monkeypatch):
    out = tmp_path / "metrics.json"
    args = ["-q", "evaluate", str(reference), "--json", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    disk = Disk(monkeypatch, tmp_path, "metrics.json", 1)
    before = digests(tmp_path)
    refused(disk, capsys, "evaluate", main(args))
    assert digests(tmp_path) == before
    monkeypatch.undo()
    assert main(args) == 0 and json.loads(out.read_text())["n_images"] > 0


@pytest.fixture()
def image_folders(tmp_path, shapes_dir) -> tuple[Path, Path]:
    """Two folders of images: the first indexed, the second added by a later build."""
    first, second = tmp_path / "images", tmp_path / "more"
    names = sorted(p.name for p in (shapes_dir / "images").iterdir())
    for folder, picked in ((first, names[:12]), (second, names[12:16])):
        folder.mkdir()
        for n in picked:
            shutil.copy(shapes_dir / "images" / n, folder / n)
    return first, second


INDEX_WRITERS = [
    ("images.npy", "index/.v-*.tmp/images.npy"),
    ("images.faiss", "index/.v-*.tmp/images.faiss"),
    ("captions.faiss", "index/.v-*.tmp/captions.faiss"),
    ("meta.sqlite", "index/.v-*.tmp/meta.sqlite"),
    ("CURRENT", "index/CURRENT"),
]


@pytest.mark.parametrize("name, pattern", INDEX_WRITERS, ids=[w[0] for w in INDEX_WRITERS])
def test_full_disk_in_an_index_build_keeps_the_live_index(tmp_path, reference, image_folders,
                                                          capsys, monkeypatch, name, pattern):
    from crossalign.index.search import open_index

    first, second = image_folders
    index = tmp_path / "index"
    assert main(["-q", "index", str(reference), "--images", str(first), "--out", str(index)]) == 0
    capsys.readouterr()
    live = open_index(index, model=False)
    version, q = live.store.version, live.store.vector("images", 0)
    live.close()
    disk = Disk(monkeypatch, tmp_path, pattern, 1)
    update = ["-q", "index", str(reference), "--out", str(index), "--add", str(second)]
    refused(disk, capsys, "index", main(update))
    monkeypatch.undo()
    still = open_index(index, model=False)  # the previous version, whole and searchable
    try:
        assert still.store.version == version and len(still) == 12
        hits = still.search_vector(q, k=3).hits
        assert len(hits) == 3 and all(Path(h.path).parent == first.resolve() for h in hits)
        for h in hits:  # each score the true cosine of the query and the stored vector
            assert abs(h.score - float(still.store.vector("images", h.id) @ q)) < 1e-4
    finally:
        still.close()
    assert main(update) == 0
    done = open_index(index, model=False)
    try:
        assert len(done) == 16
    finally:
        done.close()


@pytest.mark.parametrize("pattern", ["report.html", "report_*.png"])
def test_full_disk_at_the_report(tmp_path, reference, shapes_dir, capsys, monkeypatch, pattern):
    out = tmp_path / "report.html"
    args = ["-q", "report", str(reference), "--data", str(shapes_dir), "--out", str(out),
            "--gallery", "3"]
    assert main(args) == 0
    capsys.readouterr()
    before = digests(tmp_path)
    disk = Disk(monkeypatch, tmp_path, pattern, 2 if pattern.endswith(".png") else 1)
    refused(disk, capsys, "report", main(args))
    if pattern == "report.html":
        assert digests(tmp_path) == before  # every plot came out the same; the page is the old one
    assert digests(tmp_path)["report.html"] == before["report.html"]
