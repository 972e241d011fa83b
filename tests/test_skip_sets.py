"""Every command skips the exact same rows, for the same reasons, on one bad data set.

The corpus of ``test_bad_inputs`` (empty and whitespace captions, missing, empty, truncated
and oversized images, a text file named ``.jpg``, Latin-1 bytes, paths and links that leave
the data folder, a row without an image) goes through ``check``, ``train``,
``evaluate`` and ``report``. Each one's skipped rows are compared as exact sets of
``(kind, file:line)``, not as counts: from the check's JSON, the run's ``problems.json``,
what evaluate and the report say they skipped, and, for evaluate and the report, the rows
they actually scored, which together with the skipped ones must be every row of the file.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from crossalign.cli.main import main

from test_bad_inputs import LIMIT, SKIPPED, TINY, make_corpus


def spy_everywhere(monkeypatch, module: str, name: str, record):
    """Wrap ``module.name`` wherever it was imported, calling ``record(result, *args)``; a
    module imported later takes the wrapper from ``module``."""
    real = getattr(importlib.import_module(module), name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        record(out, *args)
        return out

    for mod in list(sys.modules.values()):
        if getattr(mod, name, None) is real:
            monkeypatch.setattr(mod, name, spy)


def errors(problems) -> set[tuple[str, str]]:
    return {(p["kind"], p["where"]) if isinstance(p, dict) else (p.kind, p.where)
            for p in problems if (p["level"] if isinstance(p, dict) else p.level) == "error"}


def data_rows(cap: Path) -> set[str]:
    """``file:line`` of every data row: lines 2 to 31, less line 15 (a quoted newline joins
    it to line 14, and a row is named by its first line)."""
    return {f"{cap}:{n}" for n in range(2, 32) if n != 15}


def test_data_check_train_evaluate_and_report_skip_the_same_rows(tmp_path, monkeypatch, capsys):
    corpus = make_corpus(tmp_path / "data")
    cap = corpus / "captions.txt"
    expected = {(kind, f"{cap}:{n}") for n, kind in SKIPPED.items()}
    said: list[list] = []
    spy_everywhere(monkeypatch, "crossalign.data.validate", "report_problems",
                   lambda _, problems, *rest: said.append(list(problems)))
    collected: list = []
    spy_everywhere(monkeypatch, "crossalign.report.collect", "collect_run",
                   lambda rr, *args: collected.append(rr))
    skipped: dict[str, set] = {}

    check = tmp_path / "check.json"
    assert main(["-q", "check", str(corpus), "--json", str(check), "--workers", "1",
                 *LIMIT]) == 0
    skipped["data check"] = errors(json.loads(check.read_text())["problems"])

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(corpus), "--out", str(run), *TINY, *LIMIT]) == 0
    skipped["train"] = errors(json.loads((run / "problems.json").read_text()))

    said.clear()
    metrics, matrix = tmp_path / "m.json", tmp_path / "d.npy"
    assert main(["-q", "evaluate", str(run), "--data", str(corpus), "--split", "all",
                 "--json", str(metrics), "--matrix", str(matrix)]) == 0
    (told,) = said
    skipped["evaluate"] = errors(told)
    scored = set(json.loads(matrix.with_suffix(".json").read_text())["caption_origin"])
    assert {where for _, where in skipped["evaluate"]} == data_rows(cap) - scored
    assert json.loads(metrics.read_text())["skipped_rows"] == len(SKIPPED)

    said.clear()
    assert main(["-q", "report", str(run), "--data", str(corpus), "--split", "all",
                 "--out", str(tmp_path / "r.html")]) == 0
    (told,) = said
    (rr,) = collected
    skipped["report"] = errors(told)
    assert errors(rr.problems) == skipped["report"]
    assert {where for _, where in skipped["report"]} == data_rows(cap) - set(rr.emb.table.origin)
    assert "Traceback" not in capsys.readouterr().err

    for command, rows in skipped.items():
        assert rows == expected, (command, sorted(rows ^ expected))
