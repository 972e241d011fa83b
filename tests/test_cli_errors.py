"""At the edges: an error the user caused is one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crossalign.cli.main import main
from crossalign.errors import ConfigError, CrossalignError, InputNotFound


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("crossalign ") and ": error: " in err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "{tmp}/no-run", "--data", "{tmp}"], ["no-run", "config.yaml"]),
    (["report", "{tmp}/no-run", "--data", "{tmp}", "--out", "{tmp}/r.html"], ["no-run"]),
    (["train", "--data", "{tmp}/nothing", "--out", "{tmp}/run"], ["nothing", "not found"]),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--config", "{tmp}/none.yaml"], ["none.yaml"]),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--set", "train.nope=1"], ["nope"]),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--set", "train.epochs=many"], ["epochs"]),
    (["train", "--data", "{tmp}", "--out", "{tmp}/run", "--set", "model.image.tower=nope"], ["nope"]),
    (["check", "{tmp}/nothing"], ["nothing"]),
    (["train", "--out", "{tmp}/run"], ["--data"]),
])
def test_user_errors_are_one_line_with_exit_2(tmp_path, shapes_dir, capsys, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    argv = [str(shapes_dir) if a == str(tmp_path) else a for a in argv]  # a real data folder
    assert main(["-q", *argv]) == 2
    _one_line(capsys, *words)


def test_bad_option_values_of_evaluate(tmp_path, capsys):
    from crossalign.evaluate.run import evaluate

    with pytest.raises(ConfigError, match="`k`"):  # the library names its parameter; the command, --k
        evaluate(tmp_path, tmp_path, ks=[0])
    assert main(["-q", "evaluate", str(tmp_path), "--data", str(tmp_path), "--k", "one"]) == 2
    _one_line(capsys, "--k", "'one'")


def test_error_types_stay_compatible():
    assert issubclass(ConfigError, ValueError) and issubclass(InputNotFound, FileNotFoundError)
    from crossalign.errors import DataError
    from crossalign.errors import ImageError
    from crossalign.errors import CheckpointError

    assert all(issubclass(e, CrossalignError) for e in (DataError, ImageError, CheckpointError))


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), FileNotFoundError("a bug")])
def test_a_bug_keeps_its_traceback(shapes_dir, monkeypatch, bug):
    from crossalign.data import doctor

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(doctor, "read_pairs", broken)
    with pytest.raises(type(bug), match="a bug"):
        main(["-q", "check", str(shapes_dir), "--no-images"])


def test_a_bug_exits_with_a_traceback_from_the_console(tmp_path):
    code = ("import sys, crossalign.data.doctor as d\n"
            "def broken(*a, **k): raise ValueError('a bug')\n"
            "d.read_pairs = broken\n"
            "from crossalign.cli.main import main\n"
            f"sys.exit(main(['-q', 'check', {str(tmp_path)!r}, '--no-images']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode not in (0, 2)
    assert "Traceback" in done.stderr and "ValueError: a bug" in done.stderr
