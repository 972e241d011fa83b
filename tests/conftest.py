"""Shared fixtures (a private feature cache, a tiny generated data set) and the CI guard.

The CI guard: a test that needs something outside Python says so with a marker and skips
with a reason when it is missing::

    @pytest.mark.needs("chromium")           # also "wordnet", "service", or several names
    def test_report_renders_in_a_browser():
        if not CHROMIUM.exists():
            pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
        ...

On a developer's machine such a test skips (``-rs`` prints why). Under CI (``CI`` set to
``true``, ``1`` or ``yes``, as ``.ci/run`` does) every skip is turned into a failure, so CI
cannot pass with a check switched off: the skip of a ``needs`` test names what was missing,
and a skip without a ``needs`` marker says that a skip under CI must name what it needs.
A skip in a fixture counts too, and so do ``pytest.importorskip``, ``skip``/``skipif``
markers and a module skipped as it is collected. An expected failure (``xfail``) stays one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def under_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``, ``1`` or ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "needs(*what): the test needs chromium, wordnet, a service, ...; it skips "
        "without them, and under CI=true that skip is a failure")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


UNNAMED = ("a skip under CI must name what it needs with a needs marker "
           '(@pytest.mark.needs("chromium"), ...)')


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if not (report.skipped and under_ci()) or hasattr(report, "wasxfail"):
        return report
    marker = item.get_closest_marker("needs")
    report.outcome = "failed"
    if marker is None:
        report.longrepr = (f"{item.nodeid} was skipped under CI=true without a needs marker "
                           f"({_skip_reason(report)}): {UNNAMED}")
    else:
        what = ", ".join(map(str, marker.args)) or "an external dependency"
        report.longrepr = (f"{item.nodeid} needs {what} and was skipped under CI=true: "
                           f"{_skip_reason(report)}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips itself as it is collected skips every test in it: under CI, an error."""
    report = yield
    if report.skipped and under_ci():
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped as it was collected under CI=true "
                           f"({_skip_reason(report)}): {UNNAMED}, so skip inside the test")
    return report


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test run gets its own feature cache (never the user's)."""
    path = tmp_path_factory.mktemp("feature-cache")
    old = os.environ.get("CROSSALIGN_CACHE_DIR")
    os.environ["CROSSALIGN_CACHE_DIR"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield path
    if old is None:
        os.environ.pop("CROSSALIGN_CACHE_DIR", None)
    else:
        os.environ["CROSSALIGN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """60 generated images with 5 captions each (read-only for tests: copy before changing)."""
    from crossalign.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_images=60, seed=1, size=64)


@pytest.fixture(scope="session")
def labelled_shapes(tmp_path_factory, shapes_dir) -> Path:
    """The shapes data as JSONL with each picture's colour as a label column (read-only)."""
    import json
    import shutil

    from crossalign.data.synthetic import COLOURS

    out = tmp_path_factory.mktemp("labelled")
    shutil.copytree(shapes_dir / "images", out / "images")
    by_image = {}
    for line in (shapes_dir / "captions.txt").read_text().splitlines()[1:]:
        name, caption = line.split(",", 1)
        by_image.setdefault(name, []).append(caption.strip('"'))
    with open(out / "data.jsonl", "w") as f:
        for name, caps in by_image.items():
            colour = next(c for c in COLOURS if f" {c} " in f" {caps[0]} ")
            f.write(json.dumps({"image": f"images/{name}", "captions": caps, "colour": colour}) + "\n")
    return out


@pytest.fixture(scope="session")
def shared_index_dir(tmp_path_factory, shapes_dir) -> Path:
    """An index of a copy of the shapes data, by a run trained for one epoch, for the service's
    tests (a test that damages a file of it puts the file back)."""
    from _live import shapes_index

    return shapes_index(tmp_path_factory.mktemp("served"), shapes_dir)


@pytest.fixture(scope="module")
def served_index(shared_index_dir):
    """That index, open, for one module of the service's tests."""
    from crossalign.index.search import open_index

    ix = open_index(shared_index_dir)
    yield ix
    ix.close()
