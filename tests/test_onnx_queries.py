"""Text queries through ONNX Runtime: the same vectors as torch, torch where it cannot run, and
concurrent searches that agree with one-at-a-time ones."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from crossalign.cli.main import main
from crossalign.errors import ConfigError
from crossalign.index.build import build_index
from crossalign.index.search import open_index
from crossalign.index._vectors import Embedder

QUERIES = ["a dog", "two children playing in the sand", "A RED CIRCLE!", "ünïcödé façade 東京",
           "a man in a red shirt climbs a rock wall while another man in blue watches from below " * 8,
           "x"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("onnx")
    base = ["-q", "train", "--data", str(shapes_dir), "--set", "train.epochs=1",
            "--set", "train.batch_size=64"]
    assert main(base + ["--out", str(root / "minilm")]) == 0
    assert main(base + ["--out", str(root / "lstm"), "--set", "model.text.tower=lstm",
                        "--set", "model.image.tower=small_cnn"]) == 0
    build_index(root / "minilm", root / "idx", data=shapes_dir, progress=False)
    return root


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_vectors_equal_torch(runs):
    torch_side = Embedder(runs / "minilm", text_runtime="torch")
    onnx_side = Embedder(runs / "minilm", text_runtime="onnx")
    assert onnx_side.text_runtime_used == "onnx" and torch_side.text_runtime_used == "torch"
    for batch in ([q] for q in QUERIES):  # one query per call, as the service asks
        assert 1 - _cos(onnx_side.text(batch), torch_side.text(batch)).min() <= 1e-4
    both = onnx_side.text(QUERIES), torch_side.text(QUERIES)  # padded to the longest
    assert both[0].shape == (len(QUERIES), torch_side.dim)
    assert 1 - _cos(*both).min() <= 1e-4


def test_a_tower_onnx_cannot_take_stays_in_torch(runs):
    assert Embedder(runs / "lstm", text_runtime="auto").text_runtime_used == "torch"
    with pytest.raises(ConfigError, match="ONNX Runtime.*LSTM|ONNX Runtime.*not a transformers"):
        Embedder(runs / "lstm", text_runtime="onnx")
    with pytest.raises(ConfigError, match="text runtime"):
        Embedder(runs / "lstm", text_runtime="tensorrt")


def test_concurrent_searches_agree_with_one_at_a_time(runs):
    ix = open_index(runs / "idx", text_runtime="onnx")
    assert ix.embedder.parallel_text
    texts = [f"a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "triangle")]
    alone = {t: ix.search(text=t, k=5) for t in texts}
    ix._texts.clear()  # nothing from memory: every thread embeds its own query
    found, errors = {}, []

    def ask(t: str) -> None:
        try:
            found[t] = ix.search(text=t, k=5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and set(found) == set(texts)
    for t in texts:
        np.testing.assert_allclose([h.score for h in found[t].hits], [h.score for h in alone[t].hits],
                                   atol=1e-5)
    ix.close()
