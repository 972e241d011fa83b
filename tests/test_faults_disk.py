"""A full or read-only disk: one clear message (exit 2), and earlier files left intact.

A full disk is simulated where it shows up, in the flush of a file being written
(``os.fsync`` answers ENOSPC); a read-only folder is a real one when the tests do not
run as root (root writes through permissions), else one whose ``mkdir`` and file
creation answer EROFS, as a read-only mount does.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from crossalign.train.state import load_resume_point

from _kill_runner import TINY, cli, sets


def digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if not ln.startswith("WARNING")]


def test_disk_full_during_a_resume_point_keeps_the_last_one(tmp_path, shapes_dir):
    run = tmp_path / "run"
    args = sets(TINY + ["train.epochs=2", f"cache.dir={tmp_path / 'cache'}"])
    full = {"faults": [{"target": "os:fsync", "path": "/resume/.model-", "call": 3, "action": "enospc"}]}
    p = cli(full, "train", "--data", str(shapes_dir), "--out", str(run), *args)
    assert p.returncode == 2, p.stderr
    (line,) = error_lines(p.stderr)
    assert line.startswith("crossalign train: error: ") and "No space left on device" in line
    assert str(run / "resume" / "model-") in line and "Traceback" not in p.stderr
    # the two resume points written before are whole; no half-written file is left
    kept = load_resume_point(run)["position"]
    assert (kept["epoch"], kept["step"]) == (1, 8)
    assert not [p for p in run.rglob("*.tmp")]
    # with room again, the run goes on from there and finishes
    done = cli(None, "train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["resumed"] is True


def read_only(folder: Path) -> dict:
    """Make ``folder`` read-only: for real, or (as root) by faults at mkdir and file creation."""
    if os.geteuid() != 0:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return {}
    return {"faults": [{"target": f"os:{fn}", "path": str(folder), "call": 1, "every": True,
                        "action": "erofs"} for fn in ("mkdir", "open")]}


def test_read_only_folder_fails_with_one_message(tmp_path, shapes_dir):
    parent = tmp_path / "ro"
    earlier = parent / "earlier.txt"
    parent.mkdir()
    earlier.write_text("an earlier result\n")
    before = digests(parent)
    spec = read_only(parent)
    try:
        p = cli(spec, "train", "--data", str(shapes_dir), "--out", str(parent / "run"),
                *sets(TINY + ["train.epochs=1", f"cache.dir={tmp_path / 'cache'}"]))
    finally:
        parent.chmod(0o755)
    assert p.returncode == 2, p.stderr
    (line,) = error_lines(p.stderr)
    assert line.startswith("crossalign train: error: ") and str(parent / "run") in line
    assert "cannot write" in line and "Traceback" not in p.stderr
    assert digests(parent) == before
