"""``evaluate --ranking qbnorm``: the bank is training queries only, the JSON says how it ranked."""

import json

import numpy as np
import pytest

from crossalign.cli.main import main
from crossalign.evaluate.bank import bank_rows, resolve_ranking
from crossalign.evaluate.ranking import qbnorm_reference
from crossalign.evaluate.retrieval import metrics_from_ranks
from crossalign.evaluate.run import evaluate
from crossalign.runs import embed_split, open_run, select_split


@pytest.fixture(scope="module")
def run(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("ranking") / "run"
    code = main(["-q", "train", "--data", str(shapes_dir), "--out", str(out),
                 "--set", "train.epochs=2", "--set", "train.batch_size=64"])
    assert code == 0
    return out


def _ranks(t_scores, i_scores, t2i):
    t_rank = np.array([np.sum(row >= row[t2i[c]]) for c, row in enumerate(t_scores)])
    i_rank = np.array([np.sum(row[t2i != i] >= row[t2i == i].max()) + 1 for i, row in enumerate(i_scores)])
    return t_rank, i_rank


def test_qbnorm_metrics_match_a_full_matrix_reference(run, shapes_dir):
    got = evaluate(run, shapes_dir, "test", ranking="qbnorm", qb_beta=10.0, progress=False)
    rd = open_run(run, shapes_dir, quiet=True)
    sub = select_split(rd.table, "test")
    bank = bank_rows(rd.table, sub)
    assert set(bank.split) == {"train"} and not set(bank.image_id) & set(sub.image_id)
    emb = embed_split(rd, sub, progress=False)
    bemb = embed_split(rd, bank, progress=False)
    t_ref = np.log(qbnorm_reference(emb.text_emb, emb.image_emb, bemb.text_emb, 10.0, 1))
    i_ref = np.log(qbnorm_reference(emb.image_emb, emb.text_emb, bemb.image_emb, 10.0, 1))
    want = metrics_from_ranks(*_ranks(t_ref, i_ref, emb.text_to_image))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    info = got["ranking"]
    assert info["name"] == "qbnorm" and info["beta"] == 10.0 and info["k"] == 1
    assert info["bank"]["images"] == 48 and info["bank"]["captions"] == 240  # the whole train split
    assert 1 <= info["t2i"]["active_gallery_items"] <= info["t2i"]["gallery_items"] == 6


def test_cli_states_the_ranking_and_samples_the_bank(run, shapes_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--json", str(out),
                 "--ranking", "qbnorm", "--qb-bank", "20", "--qb-beta", "30"]) == 0
    m = json.loads(out.read_text())
    assert m["ranking"]["bank"]["images"] == 20 and m["ranking"]["bank"]["sampled"]
    assert m["ranking"]["beta"] == 30.0
    assert "qbnorm" in capsys.readouterr().out
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--json", str(out),
                 "--ranking", "plain"]) == 0
    assert json.loads(out.read_text())["ranking"]["name"] == "plain"
    # without --ranking the run's evaluate.ranking decides, qbnorm by default
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ranking"]["name"] == "qbnorm"


def test_no_bank_outside_the_evaluated_set_falls_back_to_plain(run, shapes_dir, caplog):
    m = evaluate(run, shapes_dir, "all", ranking="qbnorm", progress=False)
    assert m["ranking"]["name"] == "plain" and m["ranking"]["requested"] == "qbnorm"
    assert "query bank" in caplog.text
    assert m == {**evaluate(run, shapes_dir, "all", ranking="plain", progress=False), "ranking": m["ranking"]}


def test_gap_seen_images_stay_out_of_their_bank(run, shapes_dir):
    m = evaluate(run, shapes_dir, "test", ranking="qbnorm", gap=True, progress=False)
    assert m["seen"]["ranking"]["bank"]["images"] == 48 - 6  # the train split less the seen sample
    assert m["unseen"]["ranking"]["bank"]["images"] == 48


def test_bad_ranking_options_name_the_option(run, shapes_dir, capsys):
    from crossalign.config import EvaluateConfig

    with pytest.raises(ValueError, match="evaluate.ranking"):
        resolve_ranking(EvaluateConfig(), ranking="best")
    with pytest.raises(ValueError, match="qb_bank"):
        resolve_ranking(EvaluateConfig(), qb_bank=-1)
    code = main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--ranking", "qbnorm",
                 "--qb-beta", "0"])
    assert code == 2 and "beta" in capsys.readouterr().err
