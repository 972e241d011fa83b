"""Zero-shot classification: hand-computed metrics, multi-label counting, and the command end to end."""

import csv
import json
import shutil

import numpy as np
import pytest

from crossalign.cli.main import main
from crossalign.data.synthetic import COLOURS, SHAPES
from crossalign.data.table import PairTable
from crossalign.evaluate.zeroshot import class_embeddings, classification_metrics, image_classes, split_labels


def test_hand_computed_accuracy_per_class_and_confusion():
    classes = ["cat", "dog", "fox"]
    scores = np.array([
        [0.9, 0.1, 0.0],  # item 0, cat: predicted cat -> hit
        [0.2, 0.7, 0.1],  # item 1, cat: predicted dog -> miss
        [0.3, 0.3, 0.1],  # item 2, dog: tie between cat and dog goes against it -> miss, predicted cat
        [0.1, 0.2, 0.8],  # item 3, dog|fox: predicted fox, one of its classes -> hit
    ])
    r = classification_metrics(scores, [[0], [0], [1], [1, 2]], classes, ks=(1, 2))
    assert r["accuracy"] == pytest.approx(50.0)
    # top-2: item 1 has cat second, item 2 has dog at rank 2 (the tie counts against it)
    assert r["top2_accuracy"] == pytest.approx(100.0)
    assert r["per_class"]["cat"] == {"n": 2, "accuracy": pytest.approx(50.0)}
    assert r["per_class"]["dog"] == {"n": 2, "accuracy": pytest.approx(50.0)}
    assert r["per_class"]["fox"] == {"n": 1, "accuracy": pytest.approx(100.0)}
    assert r["mean_per_class_accuracy"] == pytest.approx((50 + 50 + 100) / 3)
    # rows true, columns predicted; item 3 sits in the rows of dog and of fox
    assert r["confusion"] == [[1, 1, 0], [1, 0, 1], [0, 0, 1]]
    assert r["multi_label_items"] == 1
    # chance top-1: 1/3 for each single-label item, 2/3 for the two-class item
    assert r["chance"]["accuracy"] == pytest.approx(100 * (3 * (1 / 3) + 2 / 3) / 4)
    assert r["chance"]["top2_accuracy"] == pytest.approx(100 * (3 * (2 / 3) + 1) / 4)


def test_labels_are_split_and_united_per_image():
    assert split_labels("Action| Comedy |") == ["Action", "Comedy"]
    assert split_labels(None) == [] and split_labels("  ") == []
    t = PairTable()
    t.append("a", "a.png", "x", genre="Action|Drama")
    t.append("a", "a.png", "y", genre="Drama|War")
    t.append("b", "b.png", "z", genre="")
    assert image_classes(t, "genre") == {"a": ["Action", "Drama", "War"], "b": []}
    with pytest.raises(ValueError, match="available"):
        image_classes(t, "year")


def test_templates_are_averaged_and_normalised():
    vec = {"a red": [1.0, 0.0], "the red": [0.0, 2.0], "a blue": [3.0, 0.0], "the blue": [3.0, 0.0]}
    emb = class_embeddings(lambda texts: np.array([vec[t] for t in texts]), ["red", "blue"], ["a {}", "the {}"])
    np.testing.assert_allclose(emb, [[np.sqrt(0.5), np.sqrt(0.5)], [1.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="{}"):
        class_embeddings(lambda t: np.ones((len(t), 2)), ["red"], ["no slot"])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, shapes_dir):
    """The shapes data with a 'colour' column and a multi-class 'tags' column, and a run trained on it."""
    root = tmp_path_factory.mktemp("labelled")
    data = root / "data"
    shutil.copytree(shapes_dir, data)
    with open(shapes_dir / "captions.txt", newline="") as f:
        rows = list(csv.reader(f))
    with open(data / "captions.txt", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0] + ["colour", "tags"])
        for image, caption in rows[1:]:
            words = caption.replace(",", " ").split()
            colour = next(c for c in COLOURS if c in words)
            shape = next(s for s in SHAPES if s in words or s + "s" in words)
            w.writerow([image, caption, colour, f"{colour}|{shape}"])
    run = root / "run"
    assert main(["-q", "train", "--data", str(data), "--out", str(run),
                 "--set", "train.epochs=2", "--set", "train.batch_size=64"]) == 0
    return data, run


def test_zeroshot_command_by_colour(labelled, tmp_path, capsys):
    data, run = labelled
    out = tmp_path / "z.json"
    code = main(["-q", "zeroshot", str(run), "--data", str(data), "--label-column", "colour", "--split", "all",
                 "--template", "a {} shape", "--template", "something {}", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["n_items"] == 60 and r["classes"] == sorted(r["classes"]) and r["n_classes"] == len(r["classes"])
    conf = np.array(r["confusion"])
    # one colour per image: the confusion matrix holds every image once, its trace the hits
    assert conf.sum() == 60
    assert r["accuracy"] == pytest.approx(100 * np.trace(conf) / 60)
    assert r["chance"]["accuracy"] == pytest.approx(100 / r["n_classes"])
    # colour is easy to see: a model trained on captions that name it beats guessing by far
    assert r["accuracy"] > 2 * r["chance"]["accuracy"]
    printed = capsys.readouterr().out
    assert "chance" in printed and "confusion" in printed


def test_zeroshot_multi_label_column(labelled, tmp_path):
    data, run = labelled
    out = tmp_path / "t.json"
    assert main(["-q", "zeroshot", str(run), "--data", str(data), "--label-column", "tags",
                 "--template", "{}", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["multi_label_items"] == r["n_items"] == 6
    assert set(r["classes"]) <= set(COLOURS) | set(SHAPES)
    # each image counts under both of its classes
    assert np.array(r["confusion"]).sum() == 2 * r["n_items"]
    assert "any of its classes" in r["multi_label_policy"]


def test_zeroshot_bad_column_exits_2(labelled, capsys):
    data, run = labelled
    assert main(["-q", "zeroshot", str(run), "--data", str(data), "--label-column", "genre"]) == 2
    err = capsys.readouterr().err
    assert "'genre' not in the data" in err and "colour" in err
