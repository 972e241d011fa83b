"""The HTML report: sections, PNGs beside it, comparison of runs, seeded samples, a real browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crossalign
from crossalign.cli.main import main

from _browser import browser_page

EVIL = "<script>alert('x')</script> a red circle & <b>friends</b>"
SECTIONS = ['id="metrics"', "Training curves", "Cosine distance", "Text → image", "Image → text",
            "Rank histograms", "Seen vs unseen", 'class="metrics"', 'class="setup"']


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_dir) -> tuple[Path, Path]:
    """Two tiny runs on the shapes data that differ in training length."""
    root = tmp_path_factory.mktemp("report-runs")
    out = []
    for name, epochs in (("long", 3), ("short", 1)):
        code = main(["-q", "train", "--data", str(shapes_dir), "--out", str(root / name),
                     "--set", f"train.epochs={epochs}", "--set", "train.batch_size=64"])
        assert code == 0
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture(scope="module")
def evil_data(tmp_path_factory, shapes_dir, runs) -> Path:
    """The shapes data with one test caption that tries to inject markup into the page."""
    data = tmp_path_factory.mktemp("evil") / "data"
    shutil.copytree(shapes_dir, data)
    test_image = (runs[0] / "splits" / "test.txt").read_text().split()[0]
    lines = (data / "captions.txt").read_text(encoding="utf-8").splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(test_image + ","))
    lines[row] = f'{test_image},"{EVIL}"'
    (data / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def single(tmp_path_factory, runs, evil_data) -> Path:
    """The report of one run with every test caption and image as a query (k above the split size)."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["-q", "report", str(runs[0]), "--data", str(evil_data), "--out", str(out), "--gallery", "50",
                 "--explain", "3"]) == 0
    return out


def _queries(html: str, kind: str) -> list[str]:
    """The gallery blocks of one kind (``caption-row`` or ``image-id``), in page order."""
    gallery = html.split(f'<div class="gallery {kind}">', 1)[1].split("</div>\n  </div>\n\n", 1)[0]
    return re.split(r'<div class="query" ', gallery)[1:]


def _sample_ids(html: str) -> list[str]:
    return re.findall(r'data-(?:caption-row|image-id)="([^"]+)"', html)


def test_report_has_every_section(single):
    html = single.read_text(encoding="utf-8")
    for marker in SECTIONS:
        assert marker in html, marker
    # the metrics table comes before everything else
    assert html.index('class="metrics"') < html.index("Training curves")
    # self-contained: every picture is a data URI, thumbnails are JPEGs
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert any(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert 'href="http' not in html and 'src="http' not in html


def test_captions_are_escaped(single):
    html = single.read_text(encoding="utf-8")
    assert "<script" not in html and "<b>friends" not in html
    assert "&lt;script&gt;" in html and "&amp; &lt;b&gt;friends&lt;/b&gt;" in html


def test_galleries_mark_the_correct_items(single, runs, evil_data):
    html = single.read_text(encoding="utf-8")
    t2i = _queries(html, "t2i")
    i2t = _queries(html, "i2t")
    assert len(t2i) == 30 and len(i2t) == 6  # k=50 takes every test caption and image
    for block in t2i:
        rank = int(re.search(r"correct image at rank (\d+)", block).group(1))
        n_correct = block.count('<figure class="correct"')
        assert n_correct == (1 if rank <= 5 else 0)
        assert ('class="target"' in block) == (rank > 5)
        assert len(re.findall(r"<figure class=\"(?:correct)?\"", block)) == 5
    for block in i2t:
        rank = int(re.search(r"correct at rank (\d+)", block).group(1))
        marked = block.count('<li class="correct">')
        assert (marked > 0) == (rank <= 5) and marked <= 5
    # the page's numbers are the library's numbers, the seen/unseen gap included
    # (the same ranking as evaluate's: the run's evaluate.ranking)
    lib = crossalign.evaluate(runs[0], evil_data, split="test", progress=False, gap=True, seed=0)
    metrics_row = html.split('<table class="metrics">', 1)[1].split('<td class="name">long</td>', 1)[1]
    assert re.findall(r"<td>([^<]+)</td>", metrics_row)[:3] == [f"{lib[f't2i_R@{k}']:.1f}" for k in (1, 5, 10)]
    seen_row = html.split('<table class="gap">', 1)[1].split("seen (train sample)</td>", 1)[1]
    assert re.findall(r"<td>([^<]+)</td>", seen_row)[:3] == [f"{lib['seen'][f't2i_R@{k}']:.1f}" for k in (1, 5, 10)]


def test_gallery_rows_are_explained(single):
    """--explain 3: the first three queries of each gallery show why their first hit came first."""
    html = single.read_text(encoding="utf-8")
    t2i, i2t = _queries(html, "t2i"), _queries(html, "i2t")
    assert [('<figure class="why"' in b) for b in t2i] == [True] * 3 + [False] * (len(t2i) - 3)
    assert [('class="qimg why"' in b) for b in i2t] == [True] * 3 + [False] * (len(i2t) - 3)
    for block in t2i[:3]:
        caption = re.search(r'<div class="qtext">“([^”]*)”', block).group(1)
        words = re.findall(r'<span class="w" style="background: rgba\([^)]*\)" title="[^"]*">([^<]*)</span>', block)
        assert words and "".join(words) == "".join(caption.split())  # every word, escaped like the caption
        sim = float(re.search(r"why #1 · ([0-9.-]+)</figcaption>", block).group(1))
        first = float(re.search(r"<figcaption>1 · ([0-9.-]+)", block).group(1))
        assert sim == pytest.approx(first, abs=1.5e-3)  # the explained pair is the first hit
    for block in i2t[:3]:
        assert re.search(r'src="data:image/jpeg;base64,[^"]+" alt="heat map for caption 1"', block)


def test_plots_are_written_next_to_the_report(single):
    pngs = sorted(single.parent.glob("report_*.png"))
    names = {p.name for p in pngs}
    assert names == {f"report_long_{w}.png" for w in ("curves", "heatmap", "ranks", "gap")}
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 150


def test_several_runs_give_a_comparison(tmp_path, runs, shapes_dir):
    out = tmp_path / "cmp.html"
    result = crossalign.report(list(runs), shapes_dir, out=out, gallery=2, progress=False)
    html = out.read_text(encoding="utf-8")
    assert result.runs == ["long", "short"]
    assert "Recall@K by run" in html and "Validation R-sum per epoch" in html
    table = html.split('<table class="metrics">', 1)[1].split("</table>", 1)[0]
    assert '<td class="name">long</td>' in table and '<td class="name">short</td>' in table
    setup = html.split('<table class="setup">', 1)[1].split("</table>", 1)[0]
    for column in ("image tower", "text tower", "augmentation", "loss", "epochs"):
        assert column in setup
    assert (tmp_path / "cmp_recall.png").is_file() and (tmp_path / "cmp_rsum.png").is_file()
    assert html.count('<section class="card run"') == 2
    assert result.metrics["long"]["rsum"] != result.metrics["short"]["rsum"]


def test_seed_fixes_the_samples(tmp_path, runs, shapes_dir):
    pages = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.html"
        assert main(["-q", "report", str(runs[1]), "--data", str(shapes_dir), "--out", str(out),
                     "--gallery", "4", "--seed", "3"]) == 0
        pages.append(_sample_ids(out.read_text(encoding="utf-8")))
    assert len(pages[0]) > 8 and pages[0] == pages[1]


def test_other_seeds_draw_other_samples():
    from crossalign.data.table import PairTable
    from crossalign.embed.collection import EmbeddedTable
    from crossalign.report.samples import draw_samples

    t2i = np.repeat(np.arange(50), 5)  # 50 images with 5 captions each
    table = PairTable([f"i{i}" for i in t2i], [f"i{i}.png" for i in t2i], [f"c{r}" for r in range(250)],
                      ["test"] * 250, [f"x:{r}" for r in range(250)])
    rng = np.random.default_rng(0)
    emb = EmbeddedTable(table, [f"i{i}" for i in range(50)], rng.normal(size=(50, 8)), rng.normal(size=(250, 8)),
                        t2i, [])
    draws = [draw_samples(emb, 8, seed) for seed in (0, 0, 1)]
    assert np.array_equal(draws[0].text_queries, draws[1].text_queries)
    assert not np.array_equal(draws[0].text_queries, draws[2].text_queries)
    # every heatmap caption belongs to its column's image, so the diagonal holds the true pairs
    for d in draws:
        assert np.array_equal(t2i[d.heat_captions], d.heat_images)
        assert len(set(d.image_queries)) == 8


def test_missing_columns_are_tolerated(tmp_path):
    from crossalign.report.collect import read_history
    from crossalign.report.plots import training_curves

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_t2i_R@1,val_i2t_R@1,some_future_column\n1,2.0,10,12,x\n2,1.5,,20,y\n")
    history = read_history(csv)
    assert history[1]["val_t2i_R@1"] is None and history[0]["some_future_column"] is None
    png = training_curves(history, tmp_path / "curves.png")
    with Image.open(png) as im:
        assert np.asarray(im.convert("L")).std() > 0  # something was drawn


def test_heatmap_draws_captions_as_written(tmp_path):
    from crossalign.report.plots import distance_heatmap

    # unescaped, "$\frac{ ... $" is invalid matplotlib maths and savefig raises
    labels = ["price $\\frac{ and $", "plain words"]
    png = distance_heatmap(np.array([[0.1, 0.9], [0.8, 0.2]]), labels, [Image.new("RGB", (32, 32))] * 2,
                           tmp_path / "heat.png")
    with Image.open(png) as im:
        assert im.width > 200


def test_setup_describes_towers_and_augmentation():
    from crossalign.config import load_config
    from crossalign.report.collect import describe_config

    plain = describe_config(load_config(None, ["model.image.freeze=frozen"]))
    assert plain["augmentation"] == "none" and plain["image tower"].endswith("(frozen)")
    on = describe_config(load_config(None, ["augment.image=true", "augment.text=true", "loss.name=siglip"]))
    assert on["augmentation"] == "image, text" and on["loss"] == "siglip"


def test_bad_input_is_a_clear_error(tmp_path, shapes_dir, runs, capsys):
    assert main(["-q", "report", str(tmp_path / "nope"), "--data", str(shapes_dir),
                 "--out", str(tmp_path / "r.html")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["-q", "report", str(runs[1]), "--data", str(shapes_dir), "--out", str(tmp_path / "r.html"),
                 "--split", "nosuch"]) == 2
    assert "'nosuch' split" in capsys.readouterr().err


@pytest.mark.needs("chromium")
def test_report_renders_in_a_browser(single, tmp_path):
    errors: list[str] = []
    with browser_page(errors) as page:
        page.goto(single.resolve().as_uri(), wait_until="load")
        widths = page.evaluate("Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert len(widths) > 40 and all(w > 0 for w in widths)
    assert errors == []
    with Image.open(tmp_path / "shot.png") as im:
        assert im.width == 1200 and im.height > 2000


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, labelled_shapes):
    """A small run on the shapes data labelled by colour."""
    data, root = labelled_shapes, tmp_path_factory.mktemp("labelled-run")
    run = root / "run"
    assert main(["-q", "train", "--data", str(data), "--out", str(run), "--set", "train.epochs=1",
                 "--set", "model.image.tower=small_cnn", "--set", "model.image.image_size=32",
                 "--set", "model.text.tower=lstm", "--set", "train.batch_size=32"]) == 0
    return run, data


def test_label_agreement_in_the_report(labelled_run, tmp_path, capsys):
    run, data = labelled_run
    out = tmp_path / "r.html"
    assert main(["-q", "report", str(run), "--data", str(data), "--out", str(out), "--gallery", "3",
                 "--label-column", "colour", "--explain", "1"]) == 0
    html = out.read_text(encoding="utf-8")
    assert "Label agreement" in html and "label agreement by class" in html
    lib = crossalign.evaluate(run, data, split="test", progress=False, gap=True, seed=0, label_column="colour")
    table = html.split('<table class="metrics labels">', 1)[1].split("</table>", 1)[0]
    unseen = re.findall(r"<td>([^<]+)</td>", table.split('<td class="name">unseen</td>', 1)[1])
    assert unseen[:2] == [f"{100 * lib['labels']['t2i'][k]:.1f}" for k in ("precision@1", "precision@5")]
    seen = re.findall(r"<td>([^<]+)</td>", table.split('<td class="name">seen (train sample)</td>', 1)[1])
    assert seen[0] == f"{100 * lib['seen']['labels']['t2i']['precision@1']:.1f}"
    chance = re.findall(r"<td>([^<]+)</td>", table.split('<td class="name">chance</td>', 1)[1])
    assert chance[0] == f"{100 * lib['labels']['t2i']['chance']['precision@1']:.1f}"
    with Image.open(tmp_path / "r_run_labels.png") as im:
        assert im.format == "PNG" and im.height > 200
    assert main(["-q", "report", str(run), "--data", str(data), "--out", str(tmp_path / "x.html"),
                 "--label-column", "genre"]) == 2
    assert "'genre'" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
