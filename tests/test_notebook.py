"""Notebooks: examples/quickstart.ipynb runs top to bottom in a fresh kernel and shows what it
should; the results a notebook displays (SearchResult, Metrics, TrainResult) render as HTML.

The notebook runs with nbclient in the interpreter running the tests (a kernel spec written
for it, first on JUPYTER_PATH), in a temporary working folder, with the test session's own
feature cache (conftest's ``_private_cache`` sets CROSSALIGN_CACHE_DIR, which the kernel
inherits).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from crossalign.evaluate.tables import Metrics, format_metrics
from crossalign.index.search import Hit, SearchResult
from crossalign.train.loop import TrainResult

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 300
NOTEBOOK_PACKAGES = "nbclient, nbformat and ipykernel (the test extra)"


# ---- the reprs, fast -------------------------------------------------------------------------

def _hit(rank: int, path: Path, captions: list[str]) -> Hit:
    return Hit(rank=rank, score=0.9 - rank / 10, cosine=0.9 - rank / 10, kind="image", id=rank,
               image_id=rank, path=str(path), name=path.name, captions=captions)


@pytest.fixture
def search_result(tmp_path) -> SearchResult:
    hits = []
    for i, colour in enumerate(("red", "green", "blue")):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (300, 200), colour).save(path)
        hits.append(_hit(i + 1, path, [f"a {colour} picture", "another caption"]))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    hits.append(_hit(4, broken, ["<script>alert('x')</script> & more"]))
    hits.append(_hit(5, tmp_path / "gone.png", []))
    return SearchResult(hits=hits, target="images", seconds=0.0123)


def test_search_result_html_is_a_grid_of_small_thumbnails(search_result):
    page = search_result._repr_html_()
    assert page.count("<figure") == 5  # every hit, as given
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 3  # the readable ones
    for uri in uris:
        im = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert max(im.size) <= SearchResult.THUMB_SIDE
    for rank in range(1, 6):
        assert f"#{rank}</b>" in page
    assert "0.8000" in page and "a red picture" in page
    assert "another caption" not in page  # the first caption only


def test_search_result_html_escapes_and_names_unreadable_images(search_result):
    page = search_result._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "broken.jpg" in page and "gone.png" in page  # named instead of shown


def test_search_result_text_and_empty(search_result):
    text = str(search_result)
    assert text.splitlines()[0].startswith("  1  cos 0.8000  ")
    assert "(+1 more)" in text and text.endswith("(vector search, ranking plain: cos is cosine similarity)")
    empty = SearchResult(hits=[], target="images", seconds=0.0)
    assert "nothing found" in str(empty) and "nothing found" in empty._repr_html_()


def _directions(base: float) -> dict:
    m = {}
    for d in ("t2i", "i2t"):
        m.update({f"{d}_R@{k}": base * k for k in (1, 5, 10)})
        m.update({f"{d}_median_rank": 2.0, f"{d}_mean_rank": 3.25, f"{d}_mrr": 0.5})
    m["rsum"] = sum(m[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))
    return m


@pytest.fixture
def metrics() -> Metrics:
    return Metrics({**_directions(5.0), "chance": _directions(1.0), "n_images": 12, "n_captions": 60,
                    "split": "test", "ranking": {"name": "plain"}})


def test_metrics_text_is_the_command_table(metrics):
    text = str(metrics)
    assert text == format_metrics(metrics, [1, 5, 10])
    lines = text.splitlines()
    assert lines[0].split() == ["direction", "R@1", "R@5", "R@10", "median", "rank", "mean", "rank", "MRR"]
    assert lines[2].split()[:2] == ["text->image", "5.00"] and lines[3].split()[:2] == ["chance", "1.00"]
    assert lines[-1] == "ranking: plain cosine"
    assert metrics.ks == [1, 5, 10]


def test_metrics_html_table_and_still_a_dict(metrics):
    page = metrics._repr_html_()
    assert page.count("<tr") == 5  # the head, two directions, a chance row under each
    for text in ("R@10", "median rank", "mean rank", "MRR", "text-&gt;image", "image-&gt;text", "chance",
                 "12 images, 60 captions (test split)", "ranking: plain cosine"):
        assert text in page, text
    assert isinstance(metrics, dict) and metrics["t2i_R@1"] == 5.0
    assert json.loads(json.dumps(metrics)) == dict(metrics)


def test_metrics_without_a_table_show_as_a_dict():
    odd = Metrics({"a": 1})
    assert str(odd) == "{'a': 1}" and "{&#x27;a&#x27;: 1}" in odd._repr_html_()


def _epoch(epoch: int, r1: float) -> dict:
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "lr": 1e-3, **{f"val_{k}": v for k, v in
                                                                        _directions(r1).items()}}


def test_train_result_html(tmp_path):
    history = [_epoch(1, 2.0), _epoch(2, 4.0), _epoch(3, 3.0)]
    result = TrainResult(tmp_path / "run<1>", 2, history[1], history, 12.5)
    page = result._repr_html_()
    assert "run&lt;1&gt;" in page and "best epoch 2 of 3" in page
    assert "text-&gt;image" in page and ">40.00<" in page and ">0.500<" in page  # R@10, MRR
    assert page.count("<tr>") == 3 + 4  # a head and two directions; a head and three epochs
    assert "trained on" not in page
    assert str(result).startswith(f"run {tmp_path / 'run<1>'}: best epoch 2 of 3, 12.5 s; val: t2i R@1 4.00")


def test_train_result_html_says_when_val_was_trained_on(tmp_path):
    history = [_epoch(1, 2.0)]
    result = TrainResult(tmp_path, 1, history[0], history, 1.0, fit_on="train+val")
    assert result.refit
    assert "data it trained on" in result._repr_html_()
    assert "val trained on" in str(result)


def test_train_result_html_with_nothing_measured(tmp_path):
    result = TrainResult(tmp_path, 0, {}, [], 0.0)
    assert "best epoch 0 of 0" in result._repr_html_()
    assert str(result).endswith("val: none")


# ---- the quickstart notebook -----------------------------------------------------------------

def test_quickstart_is_committed_without_outputs():
    nbformat = _need("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def _need(name: str):
    """Import a notebook package, or fail naming what to install (never skip: CI must run it)."""
    try:
        return __import__(name)
    except ImportError:
        pytest.fail(f"{name} is missing: the notebook test needs {NOTEBOOK_PACKAGES} "
                    f"(pip install -e '.[test]')")


def _kernel_here(root: Path) -> None:
    """A ``python3`` kernel spec that runs this interpreter, so the notebook sees this install."""
    folder = root / "kernels" / "python3"
    folder.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))


def _outputs(cell) -> tuple[str, set[str]]:
    """A code cell's text and HTML outputs joined, and the MIME types it showed."""
    text, kinds = [], set()
    for out in cell.outputs:
        kinds.update(out.get("data", {}))
        text.append(out.get("text", ""))
        for kind in ("text/plain", "text/html"):
            text.append(out.get("data", {}).get(kind, ""))
    return "\n".join(text), kinds


def _cell(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = _need("nbformat")
    nbclient = _need("nbclient")
    _need("ipykernel")
    _kernel_here(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"the notebook failed: {e}")
    print(f"quickstart.ipynb ran in {time.perf_counter() - t0:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text, kinds = _outputs(_cell(nb, "crossalign.train("))
    assert "text/html" in kinds and "crossalign-train" in text and "best epoch" in text
    text, kinds = _outputs(_cell(nb, "crossalign.evaluate("))
    assert 'class="crossalign-metrics"' in text and "R@10" in text and "chance" in text
    text, kinds = _outputs(_cell(nb, "crossalign.report("))
    assert "image/png" in kinds
    text, kinds = _outputs(_cell(nb, "crossalign.search("))
    assert 'class="crossalign-search"' in text
    assert text.count("<figure") == 8 and text.count("<img") == 8
    text, kinds = _outputs(_cell(nb, "crossalign.explain("))
    assert "image/png" in kinds and "similarity" in text
    quick = work / "quickstart"
    assert (quick / "report.html").is_file() and (quick / "explain.png").is_file()
