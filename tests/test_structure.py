"""The layout's promises: imports run down the layers, importing changes nothing global, one
module holds the errors a user caused, and the library's entry points are plain functions."""

from __future__ import annotations

import csv
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import crossalign
from crossalign.errors import CrossalignError

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ROOT.parent / "shared" / "tools" / "layers.py"


def _all_modules() -> list[str]:
    names = ["crossalign"]
    for info in pkgutil.walk_packages(crossalign.__path__, "crossalign."):
        if ".serve.static" not in info.name and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_import_runs_down_the_layers():
    assert LAYERS.is_file(), f"{LAYERS} is missing: the layer check ships beside the project"
    done = subprocess.run([sys.executable, str(LAYERS)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_every_module_changes_nothing_global():
    code = (
        "import csv, logging, matplotlib\n"
        "before = (matplotlib.get_backend(), csv.field_size_limit(), logging.getLogger().level)\n"
        f"import importlib\nfor m in {_all_modules()!r}: importlib.import_module(m)\n"
        "after = (matplotlib.get_backend(), csv.field_size_limit(), logging.getLogger().level)\n"
        "assert before == after, (before, after)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"MPLBACKEND": "svg", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]


def test_reading_a_csv_with_a_long_field_leaves_the_csv_limit_as_it_was(tmp_path):
    from crossalign.data.readers._base import csv_rows

    path = tmp_path / "long.csv"
    path.write_text("image,caption\na.jpg," + "x" * 300_000 + "\n", encoding="utf-8")
    before = csv.field_size_limit()
    rows = csv_rows(path, ",")
    assert len(rows[1][1][1]) == 300_000  # read, although over the csv module's default limit
    assert csv.field_size_limit() == before


def test_every_user_error_class_lives_in_the_errors_module():
    classes = set()
    for name in _all_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, CrossalignError):
                classes.add(obj)
    assert len(classes) >= 8
    assert {c.__module__ for c in classes} == {"crossalign.errors"}, sorted(
        f"{c.__module__}.{c.__name__}" for c in classes if c.__module__ != "crossalign.errors")


def test_entry_points_are_plain_functions_and_rooms_stay_modules():
    import crossalign.evaluate.run  # noqa: F401
    import crossalign.report.build  # noqa: F401
    import crossalign.train.loop  # noqa: F401

    for name in ("train", "evaluate", "report", "index", "embed", "explain", "caption", "serve"):
        assert inspect.isfunction(getattr(crossalign, name)), name
        room = sys.modules[f"crossalign.{name}"]
        assert type(room).__name__ == "module" and not callable(room), name


@pytest.mark.parametrize("module", ["crossalign.evaluate", "crossalign.index", "crossalign.serve.app",
                                    "crossalign.api"])
def test_readers_of_a_run_do_not_import_training(module):
    # the room's package itself is a docstring, imported by ``import crossalign``; its modules train
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('crossalign.train.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
