"""A rendezvous of two trainings before their first cache write, missed, fails loudly.

(Writers sharing one cache are proved in test_feature_store.py.)
"""

from __future__ import annotations

from _kill_runner import TINY, cli, sets



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
