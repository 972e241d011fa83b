"""The Flickr8k grid's table: ``--merge`` keeps the rows not run again, each with its own command."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "flickr8k.py"


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("bench_flickr8k_grid", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _row(name: str, r1: float, **extra) -> dict:
    cols = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "rsum", "t2i_median_rank",
            "i2t_median_rank", "t2i_mean_rank", "i2t_mean_rank", "t2i_mrr", "i2t_mrr")
    metrics = {c: r1 for c in cols} | {"evaluate_seconds": 2.0}
    return {"row": name, "what": f"row {name}", "ranking": "plain", "train_seconds": 10.0,
            "wall_seconds": 12.0, "metrics": metrics, **extra}


def test_merge_replaces_rows_run_again_and_keeps_the_others_in_grid_order(grid):
    old = [_row("best", 30.08, command="python bench/flickr8k.py --rows a"),
           _row("qbnorm", 25.9, command="python bench/flickr8k.py --rows a"),
           _row("lite0_minilm", 24.18, command="python bench/flickr8k.py --rows a")]
    new = [_row("best", 33.14), _row("best_plain", 30.0)]
    merged = grid.merge(old, new, "python bench/flickr8k.py --rows best,best_plain --merge")
    assert [r["row"] for r in merged] == ["lite0_minilm", "qbnorm", "best", "best_plain"]
    best = next(r for r in merged if r["row"] == "best")
    assert best["metrics"]["t2i_R@1"] == 33.14
    assert best["command"].endswith("--merge")
    assert next(r for r in merged if r["row"] == "qbnorm")["command"].endswith("--rows a")


def test_a_merged_table_says_which_command_measured_each_row(grid, tmp_path):
    earlier = tmp_path / "grid.json"
    earlier.write_text(json.dumps({"command": "python bench/flickr8k.py --rows qbnorm,best",
                                   "rows": [_row("qbnorm", 25.9), _row("best", 30.08)]}))
    old = grid._earlier(earlier)
    assert {r["command"] for r in old} == {"python bench/flickr8k.py --rows qbnorm,best"}
    cmd = "python bench/flickr8k.py --rows best --merge"
    merged = grid.merge(old, [_row("best", 33.14)], cmd)
    md = grid._markdown(merged, [], cmd)
    assert "1. `python bench/flickr8k.py --rows qbnorm,best`" in md
    assert f"2. `{cmd}`" in md
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["qbnorm"].rstrip(" |").endswith("| 1")
    assert "33.14" in lines["best"] and lines["best"].rstrip(" |").endswith("| 2")
    assert "30.08" not in md
    # one command: the table says it once and has no command column
    single = grid._markdown(grid.merge([], [_row("best", 33.14)], cmd), [], cmd)
    assert f"Command: `{cmd}`" in single and "| command |" not in single


def test_merge_refuses_a_file_that_is_not_a_grid(grid, tmp_path):
    bad = tmp_path / "grid.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a grid's JSON"):
        grid._earlier(bad)
    assert grid._earlier(tmp_path / "absent.json") == []
