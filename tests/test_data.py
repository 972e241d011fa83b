"""The canonical reader, the seeded split, and bad input named by file and row."""

import json
import shutil

import pytest

from crossalign.cli.main import main
from crossalign.config import DataConfig
from crossalign.data.formats import read_pairs
from crossalign.errors import DataError
from crossalign.data.prepare import prepare_table
from crossalign.data.splits import assign_splits


def test_reader_reads_all_rows(shapes_dir):
    table = read_pairs(shapes_dir)
    assert len(table) == 300 and len(set(table.image_id)) == 60
    assert table.origin[0].endswith("captions.txt:2")
    assert all(s == "" for s in table.split)


def test_split_is_seeded_grouped_and_stable(shapes_dir):
    a, _ = prepare_table(shapes_dir, DataConfig())
    b, _ = prepare_table(shapes_dir, DataConfig())
    assert a.split == b.split
    counts = a.split_counts()
    assert counts["train"]["images"] == 48 and counts["val"]["images"] == 6 and counts["test"]["images"] == 6
    per_image = {}
    for iid, s in zip(a.image_id, a.split):
        per_image.setdefault(iid, set()).add(s)
    assert all(len(s) == 1 for s in per_image.values())
    c, _ = prepare_table(shapes_dir, DataConfig(split_seed=7))
    assert c.split != a.split
    # removing an image does not move the others
    sub = read_pairs(shapes_dir)
    sub = sub.take([i for i, iid in enumerate(sub.image_id) if iid != sub.image_id[0]])
    assign_splits(sub)
    full = dict(zip(a.image_id, a.split))
    assert all(full[i] == s for i, s in zip(sub.image_id, sub.split))


def test_given_split_files_win(tmp_path, shapes_dir):
    data = tmp_path / "d"
    shutil.copytree(shapes_dir, data)
    (data / "splits").mkdir()
    (data / "splits" / "test.txt").write_text("scene_00000.png\n")
    (data / "splits" / "train.txt").write_text("scene_00001.png\nscene_00002.png\n")
    table, _ = prepare_table(data, DataConfig())
    split = dict(zip(table.image_id, table.split))
    assert split["scene_00000.png"] == "test" and split["scene_00001.png"] == "train"
    assert split["scene_00005.png"] == ""  # in no split file: left out, as Flickr8k's extra images


def _bad_copy(tmp_path, shapes_dir):
    data = tmp_path / "bad"
    shutil.copytree(shapes_dir, data)
    lines = (data / "captions.txt").read_text().splitlines()
    lines[3] = "scene_00000.png,"  # empty caption on line 4
    lines[5] = "nope.png,a caption for a missing image"  # line 6
    (data / "captions.txt").write_text("\n".join(lines) + "\n")
    return data


def test_bad_rows_are_skipped_and_named(tmp_path, shapes_dir):
    table, problems = prepare_table(_bad_copy(tmp_path, shapes_dir), DataConfig())
    assert len(table) == 298
    msgs = [p.message() for p in problems]
    assert any("captions.txt:4" in m and "empty caption" in m for m in msgs)
    assert any("captions.txt:6" in m and "nope.png" in m for m in msgs)


def test_strict_mode_fails_with_file_and_row(tmp_path, shapes_dir):
    with pytest.raises(DataError, match=r"captions.txt:4: empty caption"):
        prepare_table(_bad_copy(tmp_path, shapes_dir), DataConfig(strict=True))


def test_cli_reports_bad_input_without_traceback(tmp_path, shapes_dir, capsys):
    data = _bad_copy(tmp_path, shapes_dir)
    code = main(["-q", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "data.strict=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "captions.txt:4" in err and "Traceback" not in err
    code = main(["-q", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert code == 2 and "data folder not found" in capsys.readouterr().err


def test_data_check_writes_a_report_only_when_asked(tmp_path, shapes_dir, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["-q", "check", str(shapes_dir), "--no-images"]) == 0
    out = capsys.readouterr().out
    assert list(cwd.iterdir()) == [] and "report written" not in out  # nothing left in the cwd
    report = tmp_path / "reports" / "check.json"
    report.parent.mkdir()
    assert main(["-q", "check", str(shapes_dir), "--no-images", "--json", str(report)]) == 0
    assert f"report written to {report}" in capsys.readouterr().out
    assert json.loads(report.read_text())["images"] == 60 and list(cwd.iterdir()) == []
