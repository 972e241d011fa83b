"""The docs stay true to the code: the generated pages (commands, settings, API) are current, the
site builds without a warning, the README stays short with working links, and every
``crossalign`` command line and dotted setting written in the README or a guide exists."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 250


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_current():
    for path, text in _generator().pages().items():
        name = path.relative_to(ROOT)
        assert path.is_file(), f"{name} is missing: run .venv/bin/python docs/gen_reference.py"
        assert path.read_text(encoding="utf-8") == text, (
            f"{name} is out of date with the code: run .venv/bin/python docs/gen_reference.py "
            "and commit the result")


@pytest.mark.needs("mkdocs")
def test_site_builds_strict(tmp_path):
    if not all(importlib.util.find_spec(name) for name in ("mkdocs", "mkdocstrings", "material")):
        pytest.skip("mkdocs is missing (pip install mkdocs-material 'mkdocstrings[python]', "
                    "part of the test extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml",
         "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not warnings, (
        "mkdocs build --strict failed:\n" + done.stderr[-4000:])
    assert (tmp_path / "site" / "index.html").is_file()


# ---- the README ----------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): "
        "move detail into a page under docs/")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, an anchor of the README itself
        if not (ROOT / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"README.md links to files that do not exist: {broken}"


# ---- command lines in prose ----------------------------------------------------------------------

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
CALL = re.compile(r"(?<![\w.\[-])crossalign\s+(?=-q\s|--quiet\s|[a-z])")
STOP = {"|", "||", "&&", ";", ">", ">>", "&"}


def _snippets(text: str) -> list[str]:
    """Fenced code lines (continued lines joined) and inline code spans of a Markdown text."""
    found = []
    for block in FENCE.findall(text):
        found += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    found += [" ".join(span.split()) for span in SPAN.findall(FENCE.sub("", text))]
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _problems(line: str, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for match in CALL.finditer(line):
        try:
            tokens = shlex.split(line[match.end():], comments=True)
        except ValueError:
            tokens = line[match.end():].split()
        words = []
        for tok in tokens:
            if tok in STOP:
                break
            words.append(tok.strip("[]),"))
        if words and words[0] in ("-q", "--quiet"):
            words = words[1:]
        node, path = parser, []
        while words and _subparsers(node):
            if words[0] not in _subparsers(node):
                problems.append(f"{' '.join(['crossalign', *path, words[0]])}: no such command")
                break
            path.append(words.pop(0))
            node = _subparsers(node)[path[-1]]
        else:
            known = {opt for action in node._actions for opt in action.option_strings}
            for word in words:
                flag = word.split("=", 1)[0]
                if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in known:
                    problems.append(f"{' '.join(['crossalign', *path])} has no flag {flag}")
    return problems


def test_commands_in_the_docs_exist():
    from crossalign.cli.main import build_parser

    parser = build_parser()
    pages = [README, *sorted(p for p in DOCS.rglob("*.md") if p.parent.name != "reference")]
    problems = []
    for page in pages:
        for line in _snippets(page.read_text(encoding="utf-8")):
            problems += [f"{page.relative_to(ROOT)}: {p} (in: {line.strip()[:100]})"
                         for p in _problems(line, parser)]
    assert not problems, ("command lines in the docs that the parser does not know:\n"
                          + "\n".join(problems))


# ---- settings in prose ---------------------------------------------------------------------------

SECTIONS = "data|model|loss|train|cache|augment|evaluate"
SETTING = re.compile(rf"(?<![\w./-])((?:{SECTIONS})(?:\.[a-z_][a-z0-9_]*)+)(?![\w*-])")
FILE_SUFFIXES = {"csv", "txt", "json", "yaml", "py", "safetensors", "noun", "npy", "npz", "tar"}


def _settings(cls, prefix: str = "") -> set[str]:
    import dataclasses

    names = set()
    for f in dataclasses.fields(cls):
        names.add(prefix + f.name)
        if dataclasses.is_dataclass(f.default_factory):
            names |= _settings(f.default_factory, f"{prefix}{f.name}.")
    return names


def test_settings_in_the_docs_exist():
    from crossalign.config import RunConfig

    known = _settings(RunConfig)
    pages = [README, *sorted(p for p in DOCS.rglob("*.md") if p.parent.name != "reference")]
    problems = []
    for page in pages:
        for line in _snippets(page.read_text(encoding="utf-8")):
            for name in SETTING.findall(line):
                if name not in known and name.rsplit(".", 1)[1] not in FILE_SUFFIXES:
                    problems.append(f"{page.relative_to(ROOT)}: no setting {name} "
                                    f"(in: {line.strip()[:100]})")
    assert not problems, ("settings in the docs that crossalign.config does not define:\n"
                          + "\n".join(problems))
