"""CI cannot pass with a check switched off.

- the ``needs`` marker (tests/conftest.py): under ``CI=true`` a skipped browser, WordNet or
  service test fails the run; elsewhere it skips, and ``-rs`` (pyproject's addopts) prints why;
- under ``CI=true`` a skip without a ``needs`` marker fails too, saying it must name what it
  needs; an expected failure (``xfail``) is no skip and stays what it is;
- ``.ci/run``: a failed ``apt-get`` or a failed ``make test`` fails the script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GUARDED = '''
import pytest

@pytest.fixture
def wordnet_dir():
    pytest.skip("WordNet is not installed here")

@pytest.mark.needs("chromium")
def test_browser():
    pytest.skip("/usr/bin/chromium is missing")

@pytest.mark.needs("wordnet")
def test_synonyms(wordnet_dir):
    pass

@pytest.mark.needs("service")
def test_service_import():
    pytest.importorskip("no_such_module_for_the_guard")

def test_unmarked_skip():
    pytest.skip("an ordinary skip")

@pytest.mark.skipif(True, reason="an unmarked skipif")
def test_unmarked_skipif():
    pass

@pytest.fixture
def unmarked_fixture():
    pytest.skip("an unmarked fixture skip")

def test_unmarked_fixture_skip(unmarked_fixture):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_imperative_xfail():
    pytest.xfail("not done yet")

def test_passes():
    assert True
'''

SKIPPED_MODULE = '''
import pytest

pytest.importorskip("no_such_module_for_the_guard")

def test_never_collected():
    pass
'''


def _run_guarded(tmp_path: Path, ci: str | None, module: str = GUARDED,
                 *extra: str) -> subprocess.CompletedProcess:
    """Run a small suite (one test module) with the project's conftest and pytest settings."""
    suite = tmp_path / "suite"
    suite.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", suite / "conftest.py")
    (suite / "test_guarded.py").write_text(module)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
                           "--rootdir", str(suite), "-p", "no:cacheprovider", *extra, str(suite)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=suite)


def test_pytest_always_shows_skip_reasons(pytestconfig):
    assert pytestconfig.inipath == ROOT / "pyproject.toml"
    assert "-rs" in pytestconfig.getini("addopts")


def test_skips_of_needed_tools_fail_under_ci(tmp_path):
    done = _run_guarded(tmp_path, "true")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    # a skip in a fixture or by a skipif marker happens at setup and becomes an error there: it
    # fails the run as well; nothing is left skipped
    assert "3 failed, 1 passed, 2 xfailed, 3 errors" in out, out
    assert "needs chromium and was skipped under CI=true: /usr/bin/chromium is missing" in out
    assert "needs wordnet and was skipped under CI=true: WordNet is not installed here" in out
    assert "needs service and was skipped under CI=true" in out and "no_such_module_for_the_guard" in out


def test_skips_without_a_needs_marker_fail_under_ci(tmp_path):
    done = _run_guarded(tmp_path, "true", GUARDED, "-rsx")  # x: name the expected failures
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    must = "a skip under CI must name what it needs with a needs marker"
    for test, reason in (("test_unmarked_skip", "an ordinary skip"),
                         ("test_unmarked_skipif", "an unmarked skipif"),
                         ("test_unmarked_fixture_skip", "an unmarked fixture skip")):
        assert (f"test_guarded.py::{test} was skipped under CI=true without a needs marker "
                f"({reason}): {must}") in out, out
    assert out.count(must) == 3  # neither a needs test nor an xfail is told to name its needs
    for test in ("test_expected_failure", "test_imperative_xfail"):  # expected failures stay so
        assert f"XFAIL test_guarded.py::{test}" in out, out


def test_a_module_skipped_at_collection_fails_under_ci(tmp_path):
    done = _run_guarded(tmp_path, "true", SKIPPED_MODULE)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out  # pytest's exit for a collection error
    assert "test_guarded.py was skipped as it was collected under CI=true" in out, out
    assert "no_such_module_for_the_guard" in out and "1 error" in out and "1 skipped" not in out
    outside = _run_guarded(tmp_path / "outside", None, SKIPPED_MODULE)
    # elsewhere the module skips (pytest's exit 5: no test ran), with its reason shown
    assert outside.returncode == 5 and "1 skipped" in outside.stdout, outside.stdout
    assert "no_such_module_for_the_guard" in outside.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_the_same_tests_skip_with_reasons_outside_ci(tmp_path, ci):
    done = _run_guarded(tmp_path, ci)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 passed, 6 skipped, 2 xfailed" in out, out
    for reason in ("/usr/bin/chromium is missing", "WordNet is not installed here", "an ordinary skip",
                   "an unmarked skipif", "an unmarked fixture skip"):
        assert reason in out  # -rs from pyproject's addopts


# --- .ci/run ------------------------------------------------------------------------------

def _fake_tools(tmp_path: Path, apt_rc: int, make_rc: int) -> Path:
    """``apt-get`` and ``make`` that log their calls (with CI) and exit with the given codes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, rc in (("apt-get", apt_rc), ("make", make_rc)):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $* CI=$CI" >> "{log}"\nexit {rc}\n')
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _ci_run(tmp_path: Path, apt_rc: int, make_rc: int) -> tuple[int, list[str]]:
    bin_dir = _fake_tools(tmp_path, apt_rc, make_rc)
    env = {**{k: v for k, v in os.environ.items() if k != "CI"},
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True,
                          env=env, timeout=60)
    log = tmp_path / "calls.log"
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_ci_run_installs_then_tests_under_ci(tmp_path):
    rc, calls = _ci_run(tmp_path, apt_rc=0, make_rc=0)
    assert rc == 0, calls
    assert [c.split()[:2] for c in calls] == [["apt-get", "update"], ["apt-get", "install"],
                                              ["make", "test"]]
    # everything a bare machine lacks: the venv module, make, the browser with fonts, WordNet
    for package in ("python3-venv", "make", "chromium", "fonts-dejavu-core", "wordnet-base"):
        assert package in calls[1].split(), calls[1]
    assert "-y" in calls[1].split()  # no question asked
    assert calls[2].endswith("CI=true")  # the guard is on for the test run


def test_ci_run_fails_when_apt_get_fails(tmp_path):
    rc, calls = _ci_run(tmp_path, apt_rc=100, make_rc=0)
    assert rc != 0
    assert calls == ["apt-get update CI=true"]  # stopped there: no tests run without the tools


def test_ci_run_fails_when_tests_fail_or_none_ran(tmp_path):
    rc, calls = _ci_run(tmp_path, apt_rc=0, make_rc=2)  # make's code when pytest exits 1 or 5
    assert rc != 0 and calls[-1].startswith("make test")
