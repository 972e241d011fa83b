"""``evaluate --protocol seed``: top-1 over the whole matrix and for held-out items, against brute force."""

import json

import numpy as np
import pytest

from crossalign.cli.main import main
from crossalign.evaluate.protocol import seed_protocol
from crossalign.evaluate.run import evaluate
from crossalign.runs import embed_split, open_run


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(img, txt, t2i, queries_img):
    """Top-1 hits (%) of the captions of ``queries_img`` and of those images, among every item."""
    sim = img.astype(np.float64) @ txt.T.astype(np.float64)  # [images, captions]
    caps = [c for c in range(len(t2i)) if t2i[c] in set(queries_img)]
    # ties count against the query: a hit needs the correct item strictly above every other
    t_hit = [all(sim[j, c] < sim[t2i[c], c] for j in range(len(img)) if j != t2i[c]) for c in caps]
    i_hit = [sim[i, t2i == i].max() > sim[i, t2i != i].max() for i in queries_img]
    return 100 * np.mean(t_hit), 100 * np.mean(i_hit), len(caps)


def test_seed_protocol_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 40
    img = _unit(rng.normal(size=(n, 16)))
    t2i = np.concatenate([np.arange(n), rng.integers(0, n, 30)])  # 1 to several captions each
    txt = _unit(img[t2i] + 0.8 * rng.normal(size=(len(t2i), 16)))
    held = np.zeros(n, bool)
    held[rng.choice(n, 12, replace=False)] = True
    got = seed_protocol(img, txt, t2i, held, ks=(1, 5))
    for part, queries in (("all", np.arange(n)), ("held_out", np.flatnonzero(held))):
        t1, i1, n_cap = _brute(img, txt, t2i, queries)
        assert got[part]["t2i_top1"] == pytest.approx(t1), part
        assert got[part]["i2t_top1"] == pytest.approx(i1), part
        assert got[part]["n_images"] == len(queries) and got[part]["n_captions"] == n_cap
        assert got[part]["chance"]["t2i_top1"] == pytest.approx(100 / n)
        m = np.bincount(t2i, minlength=n)[queries]
        assert got[part]["chance"]["i2t_top1"] == pytest.approx(100 * np.mean(m / len(t2i)))
    assert 0 < got["held_out"]["t2i_top1"] < 100 and "t2i_R@5" in got["all"]


def test_no_held_out_items_leaves_that_part_out():
    rng = np.random.default_rng(1)
    img = _unit(rng.normal(size=(5, 4)))
    got = seed_protocol(img, img, np.arange(5), np.zeros(5, bool))
    assert "held_out" not in got and got["all"]["t2i_top1"] == 100.0
    with pytest.raises(ValueError, match="held_out"):
        seed_protocol(img, img, np.arange(5), np.zeros(4, bool))


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("protocol") / "run"
    assert main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "train.batch_size=64"]) == 0
    return out


def test_cli_seed_protocol_ranks_held_out_items_among_all(run, shapes_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--json", str(out),
                 "--protocol", "seed"]) == 0
    m = json.loads(out.read_text())
    proto = m["seed_protocol"]
    assert m["n_images"] == 6 and "t2i_R@1" in m  # the usual metrics of the split stay
    assert proto["all"]["n_images"] == 60 and proto["held_out"]["n_images"] == 12
    assert proto["protocol"]["held_out_splits"] == ["test", "val"]
    rd = open_run(run, shapes_dir, quiet=True)
    emb = embed_split(rd, rd.table, progress=False)
    held = [i for i, s in zip(emb.image_ids, [dict(zip(emb.table.image_id, emb.table.split))[i]
                                               for i in emb.image_ids]) if s != "train"]
    queries = np.array([emb.image_ids.index(i) for i in held])
    t1, i1, _ = _brute(emb.image_emb, emb.text_emb, emb.text_to_image, queries)
    assert proto["held_out"]["t2i_top1"] == pytest.approx(t1)
    assert proto["held_out"]["i2t_top1"] == pytest.approx(i1)
    assert "held-out items (12 images" in capsys.readouterr().out


def test_unknown_protocol_is_refused(run, shapes_dir):
    with pytest.raises(ValueError, match="protocol"):
        evaluate(run, shapes_dir, "test", protocol="seeds", progress=False)
