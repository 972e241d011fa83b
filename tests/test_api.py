"""One product from Python and the terminal: every command is a function of ``crossalign`` with
the command's name, and every flag is a parameter of it with the same default."""

import argparse
import importlib
import inspect
import pkgutil

import pytest

import crossalign
from crossalign.api import COMMANDS
from crossalign.cli.main import build_parser

# dests that are the parser's own, not parameters: which command ran, its run function, -q
PARSER_OWN = {"command", "func", "help", "quiet"}
# the one flag spelled apart from its parameter: --set (what users of Hydra, open_clip and
# mmcv type) fills ``overrides``
SPELLED_APART = {"--set": "overrides"}
# flags that say how the terminal prints what the function returns (Python gets the object)
PRINTING = {("search", "json"), ("duplicates", "json"), ("towers", "json")}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_has_its_function_and_every_function_its_command():
    assert sorted(_commands()) == sorted(COMMANDS)
    for name in COMMANDS:
        assert callable(getattr(crossalign, name)), name
        assert name in crossalign.__all__
    # load is Python's alone: it returns a model in memory, which a terminal has no use for
    functions = {n for n in crossalign.__all__ if inspect.isfunction(getattr(crossalign, n))}
    assert functions - set(COMMANDS) == {"load"}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_is_a_parameter_with_the_same_default(name):
    fn = getattr(crossalign, name)
    params = inspect.signature(fn).parameters
    for action in _commands()[name]._actions:
        if action.dest in PARSER_OWN or (name, action.dest) in PRINTING:
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        assert action.dest in params, f"{name}: {flag or action.dest} is not a parameter of crossalign.{name}"
        if flag is not None and flag not in SPELLED_APART:
            assert flag == "--" + action.dest.replace("_", "-"), f"{name}: {flag} fills {action.dest}"
        if flag is None:
            continue  # a positional argument: required, or a list that may be empty
        default = params[action.dest].default
        given = action.default
        if isinstance(given, list):  # a repeatable flag starts from a list; the parameter from ()
            given = tuple(given)
        if isinstance(default, list):
            default = tuple(default)
        assert given == default, f"{name}: {flag} defaults to {action.default!r}, the parameter to {default!r}"


def test_the_functions_keep_their_names_after_every_room_is_imported():
    """The rooms train/, evaluate/, index/, ... share names with functions; importing any of
    their modules later must not put a module in a function's place."""
    for info in pkgutil.walk_packages(crossalign.__path__, "crossalign."):
        if not info.name.startswith("crossalign.cli") and info.name != "crossalign.__main__":
            importlib.import_module(info.name)
    for name in crossalign.__all__:
        if name != "__version__":
            assert not inspect.ismodule(getattr(crossalign, name)), name
            assert getattr(crossalign, name) is getattr(crossalign.api, name), name


def test_settings_as_keywords_reach_the_config():
    from crossalign.api._settings import as_overrides, keywords
    from crossalign.config import load_config
    from crossalign.errors import ConfigError

    names = keywords()
    assert names["epochs"] == "train.epochs" and names["image_tower"] == "model.image.tower"
    assert names["text_tower"] == "model.text.tower" and names["loss_name"] == "loss.name"
    cfg = load_config(None, as_overrides({"epochs": 3, "image_tower": "small_cnn", "crop_scale": (0.5, 1.0)}))
    assert cfg.train.epochs == 3 and cfg.model.image.tower == "small_cnn"
    assert tuple(cfg.augment.crop_scale) == (0.5, 1.0)
    with pytest.raises(ConfigError, match="epoch.*did you mean epochs"):
        as_overrides({"epoch": 3})


def test_a_library_error_names_parameters_and_the_command_names_flags(capsys):
    from crossalign.cli.main import main

    with pytest.raises(Exception, match="`fixed`"):
        crossalign.train("d", "o", fixed=True, trials=3)
    assert main(["train", "--data", "d", "--out", "o", "--fixed", "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "--fixed" in err and "--trials" in err and "`" not in err


def test_no_code_reaches_a_room_through_the_name_of_a_function():
    """(Only crossalign/__init__.py imports the rooms so, before it binds the functions.)
    ``from crossalign import train`` and ``import crossalign.train.loop as loop`` give the
    function ``crossalign.train`` (the second fails); a room's modules are reached as
    ``from crossalign.train import loop`` or ``from crossalign.train.loop import ...``."""
    import re
    from pathlib import Path

    rooms = "|".join(sorted(set(COMMANDS) & {"train", "evaluate", "index", "report", "embed", "explain",
                                             "caption", "serve"}))
    bad = re.compile(rf"^\s*(import crossalign\.({rooms})\.[\w.]+ as |from crossalign import ({rooms})\b)", re.M)
    root = Path(__file__).resolve().parents[1]
    found = [f"{p.relative_to(root)}: {m.group(0).strip()}" for folder in ("src", "tests", "bench", "examples", "docs")
             for p in sorted((root / folder).rglob("*.py")) if p != root / "src/crossalign/__init__.py"
             for m in bad.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found


@pytest.mark.parametrize("bad", ["train.keep=first", "train.fit_on=val", "train.precision=fp16", "loss.name=triplet",
                                 "model.head=deep", "model.image.freeze=half", "model.image.bn_stats=frozen",
                                 "augment.flip_prob=2", "model.head_dropout=1", "train.batch_size=0",
                                 "data.split_ratios=[0.5,0.5,0.5]", "evaluate.ranking=bm25", "cache.dtype=int8",
                                 "train.fit_on=train+val"])
def test_every_setting_is_checked_when_the_config_resolves(bad):
    """One place, RunConfig.validate, before any data is read: the message names the setting."""
    from crossalign.config import load_config
    from crossalign.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        load_config(None, [bad])
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        crossalign.train("no-data", "no-run", overrides=[bad], fixed=True)


def test_the_parser_and_the_package_import_no_heavy_library():
    """``crossalign --help`` and ``import crossalign`` stay instant: torch, numpy's users and the
    rest load inside the functions that need them."""
    import subprocess
    import sys

    code = ("import sys; import crossalign; from crossalign.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'timm', 'faiss', 'fastapi') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
