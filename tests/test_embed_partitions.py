"""``crossalign embed``: partitions one task of N at a time, written whole or not at all,
skipped when done; ``index --from-embeddings`` builds the same index as embedding directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossalign.cli.main import main
from crossalign.data.readers.shards import expand_braces
from crossalign.embed.partitions import list_partitions, read_partition
from test_shard_refs import _write_shards


def test_brace_patterns():
    assert expand_braces("s/train-{000..002}.tar") == ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("partitions")
    _write_shards(shapes_dir, root / "shards")
    run = root / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "model.image.tower=small_cnn", "--set", "model.image.image_size=32",
                 "--set", "model.text.tower=lstm", "--set", "train.batch_size=32"]) == 0
    return root, run


def test_tasks_share_the_shards_and_a_second_run_writes_nothing(setup, capsys):
    root, run = setup
    out = root / "emb"
    pattern = str(root / "shards" / "{train-000,train-001,train-002,train-003,val-004,test-005}.tar")
    for task in ("0/2", "1/2"):
        assert main(["-q", "embed", str(run), "--data", pattern, "--out", str(out), "--shard", task]) == 0
    parts = list_partitions(out)
    assert [p.name for p in parts] == [f"part-{u:05d}" for u in range(6)]
    assert "3 of 6 partitions are this task's; 3 written" in capsys.readouterr().out
    stamps = {p.name: (p / "images.npy").stat().st_mtime_ns for p in parts}
    assert main(["-q", "embed", str(run), "--data", str(root / "shards"), "--out", str(out), "--shard", "1/2"]) == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert {p.name: (p / "images.npy").stat().st_mtime_ns for p in list_partitions(out)} == stamps
    part = read_partition(parts[0])
    assert part.image_emb.shape == (10, 256) and len(part.captions) == part.text_emb.shape[0] == 50
    assert np.allclose(np.linalg.norm(part.image_emb, axis=1), 1, atol=1e-5)
    assert all("#tar:" in m["path"] and len(m["content_hash"]) == 64 for m in part.images)


def test_index_from_embeddings_equals_the_direct_index(setup, tmp_path):
    from crossalign.index.build import build_index
    from crossalign.index.search import open_index

    root, run = setup
    out = tmp_path / "emb"
    assert main(["-q", "embed", str(run), "--data", str(root / "shards"), "--out", str(out)]) == 0
    assert main(["-q", "index", str(run), "--from-embeddings", str(out), "--out", str(tmp_path / "a")]) == 0
    build_index(run, tmp_path / "b", data=root / "shards", progress=False)
    a, b = open_index(tmp_path / "a"), open_index(tmp_path / "b")
    try:
        assert len(a) == len(b) == 60
        ra, rb = (ix.search(text="a red circle", k=10) for ix in (a, b))
        assert np.allclose([h.score for h in ra.hits], [h.score for h in rb.hits], atol=1e-5)
        ca = a.search(text="two blue squares", k=5, target="captions")
        assert len(ca.hits) == 5 and ca.hits[0].captions
    finally:
        a.close(), b.close()


def test_a_killed_task_leaves_nothing_taken_and_a_damaged_partition_is_named(setup, tmp_path, capsys):
    root, run = setup
    out = tmp_path / "emb"
    assert main(["-q", "embed", str(run), "--data", str(root / "shards"), "--out", str(out), "--shard", "0/3"]) == 0
    (out / ".part-00001.deadbeef.tmp").mkdir()  # what a task killed while writing leaves
    (out / ".part-00001.deadbeef.tmp" / "images.npy").write_bytes(b"half")
    assert [p.name for p in list_partitions(out)] == ["part-00000", "part-00003"]
    assert main(["-q", "embed", str(run), "--data", str(root / "shards"), "--out", str(out), "--shard", "1/3"]) == 0
    assert [p.name for p in list_partitions(out)] == ["part-00000", "part-00001", "part-00003", "part-00004"]
    with open(out / "part-00003" / "texts.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01")
    capsys.readouterr()
    assert main(["-q", "index", str(run), "--from-embeddings", str(out), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert "part-00003/texts.npy" in err and "damaged" in err


def test_other_layouts_are_cut_by_size_and_another_models_partitions_are_refused(setup, shapes_dir, tmp_path,
                                                                                  capsys):
    root, run = setup
    out = tmp_path / "emb"
    assert main(["-q", "embed", str(run), "--data", str(shapes_dir), "--out", str(out),
                 "--partition-size", "25"]) == 0
    parts = list_partitions(out)
    assert [len(read_partition(p).images) for p in parts] == [25, 25, 10]
    done = json.loads((parts[1] / "done.json").read_text())
    done["weights_hash"] = "0" * 32
    (parts[1] / "done.json").write_text(json.dumps(done))
    assert main(["-q", "index", str(run), "--from-embeddings", str(out), "--out", str(tmp_path / "i")]) == 2
    assert "another model" in capsys.readouterr().err
    assert main(["-q", "embed", str(run), "--data", str(shapes_dir), "--out", str(out), "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_the_share_comes_from_torchrun_when_not_given(monkeypatch):
    from crossalign.api._models import parse_shard
    from crossalign.errors import ConfigError

    assert parse_shard("3/16") == (3, 16)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("") == (1, 3)
    with pytest.raises(ConfigError, match="i/N"):
        parse_shard("3 of 16")
