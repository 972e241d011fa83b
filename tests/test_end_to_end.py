"""A whole run through the command line on a tiny generated data set, on the CPU."""

import json

import numpy as np

import crossalign
from crossalign.cli.main import main


def test_train_evaluate_load(tmp_path, shapes_dir, capsys):
    run = tmp_path / "run"
    code = main(["-q", "train", "--data", str(shapes_dir), "--out", str(run),
                 "--set", "train.epochs=8", "--set", "train.batch_size=64"])
    assert code == 0
    for name in ("config.yaml", "metrics.csv", "model_best.safetensors", "model_last.safetensors",
                 "summary.json", "splits/train.txt", "splits/test.txt"):
        assert (run / name).exists(), name
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", str(run), "--data", str(shapes_dir), "--split", "test", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text->image" in printed and "image->text" in printed
    m = json.loads(out.read_text())
    for key in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10",
                "t2i_median_rank", "i2t_median_rank", "n_images", "n_captions"):
        assert key in m
    assert m["n_images"] == 6 and m["n_captions"] == 30
    # chance R@1 is 1/6 of images: a trained model on this easy data is far above it
    assert m["t2i_R@1"] > 40 and m["i2t_R@1"] > 40
    # the library call gives the same numbers as the command
    lib = crossalign.evaluate(run, shapes_dir, split="test", progress=False)
    assert lib["t2i_R@1"] == m["t2i_R@1"]
    # crossalign.load embeds raw inputs the same way evaluation embedded cached features
    aligner = crossalign.load(run)
    img = aligner.encode_image([str(shapes_dir / "images" / "scene_00000.png")])
    txt = aligner.encode_text(["a red circle", "two blue squares"])
    assert img.shape == (1, 256) and txt.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
