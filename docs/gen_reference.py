"""Generate the reference pages of the docs site from the code they describe.

    .venv/bin/python docs/gen_reference.py    # writes docs/reference/*.md and docs/api.md

- ``docs/reference/settings.md``: every setting of ``crossalign.config.RunConfig`` (the dataclass
  tree walked: dotted name, type, default), described by the comment next to the field in
  ``src/crossalign/config.py``: its trailing ``# ...`` comment, or else the comment lines
  directly above it. A setting without a comment is an error naming it.
- ``docs/api.md``: the Python API page, rendered by mkdocstrings from the docstrings: one block
  per name in ``crossalign.__all__``, read where the object is defined (a static reader cannot
  expand a computed ``__all__``, and ``crossalign.train`` also names the training subpackage).
- ``docs/reference/commands.md``: every command of the ``crossalign`` console script, read from
  its parser (``crossalign.cli.main.build_parser``): description, usage, every flag with its help
  and default, and an example from ``EXAMPLES`` below. A command without an example, an example
  of a command that no longer exists and an example the parser refuses are errors naming them.

``tests/test_docs.py`` checks that the committed pages are what this script writes now.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import io
import shlex
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
CONFIG_SOURCE = ROOT / "src" / "crossalign" / "config.py"
USAGE_WIDTH = 88  # usage lines are wrapped at a fixed width, whatever the terminal

# One example per command, keyed by the command's path as typed after `crossalign`. A command that
# is added or renamed needs its entry here; the generator names any that is missing or left over.
EXAMPLES = {
    "train": "crossalign train --data my_folder --out runs/mine",
    "tune": "crossalign tune --data my_folder --out runs/search --budget 10m",
    "evaluate": "crossalign evaluate runs/mine --split test --json runs/mine/test.json",
    "zeroshot": ('crossalign zeroshot runs/mine --data my_folder --label-column genre '
                 '--template "a poster of a {} movie" --json zs.json'),
    "check": "crossalign check my_folder --json check.json",
    "convert": "crossalign convert dataset_flickr8k.json --out flickr8k_folder",
    "synth": "crossalign synth --out shapes --n 600",
    "report": "crossalign report runs/mine --data my_folder --out runs/mine/report.html",
    "towers": "crossalign towers --modality image",
    "index": "crossalign index runs/mine --data my_folder --out my_index",
    "search": 'crossalign search my_index "a dog runs on the beach" -k 5',
    "serve": "crossalign serve my_index --token-file token.txt --workers 2",
    "duplicates": "crossalign duplicates my_index --out dups",
    "explain": ('crossalign explain runs/mine --image photo.jpg --text "a dog runs on the beach" '
                '--out why'),
    "embed": ("crossalign embed runs/mine --data 'shards/train-{000..099}.tar' --out emb "
              "--shard 3/16"),
    "caption": "crossalign caption runs/mine --image photo.jpg --k 5",
    "export": "crossalign export runs/clip --out clip-folder --wise 0.5",
}


class ReferenceError(Exception):
    """The code and the docs disagree: a setting without a comment, a command without an example."""


# ---- settings ------------------------------------------------------------------------------------


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """``{(class name, field name): comment}`` for every annotated field of every class in
    ``source``: the field's trailing comment, or else the comment lines directly above it."""
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()  # lines holding code (tokens other than comments)
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in skip:
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    found: dict[tuple[str, str], str] = {}
    for cls in ast.walk(ast.parse(source)):
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = comments.get(node.end_lineno, "")
                if not text:
                    above, line = [], node.lineno - 1
                    while line in comments and line not in code_lines:
                        above.insert(0, comments[line])
                        line -= 1
                    text = " ".join(above)
                found[(cls.name, node.target.id)] = text
    return found


def format_default(value) -> str:
    """A default as it is written in a YAML config or after ``--set``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 8 else f"{value:.6g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_default(v) for v in value) + "]"
    return str(value)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def settings_sections(cls: type, prefix: str, comments: dict, missing: list) -> list:
    """``[(dotted section, class docstring, rows)]`` for ``cls`` and the dataclasses inside it,
    each row ``(dotted name, type, default, description)``; settings without a comment are
    added to ``missing``."""
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            nested.extend(settings_sections(f.default_factory, name + ".", comments, missing))
            continue
        text = comments.get((cls.__name__, f.name), "")
        if not text:
            missing.append(name)
        rows.append((name, str(f.type), format_default(_default(f)), text))
    doc = " ".join((cls.__doc__ or "").split()).replace("``", "`")
    own = [(prefix.rstrip(".") or "top level", doc, rows)] if rows else []
    return own + nested


def settings_page() -> str:
    from crossalign.config import RunConfig

    comments = field_comments(CONFIG_SOURCE.read_text(encoding="utf-8"))
    missing: list[str] = []
    sections = settings_sections(RunConfig, "", comments, missing)
    if missing:
        raise ReferenceError(
            f"settings without a comment in src/crossalign/config.py: {', '.join(missing)} "
            "(add a one-line # comment after the field, or directly above it)")
    sections.sort(key=lambda s: s[0] == "top level")  # the top-level settings (then) last
    out = [
        "# Settings",
        "",
        "<!-- Generated by docs/gen_reference.py from src/crossalign/config.py; do not edit. -->",
        "",
        "Every setting of a run, with its type, default and meaning. Set one on the command line "
        "with `--set section.name=value` (repeatable), or in a YAML file given with `--config`, "
        "nested by section:",
        "",
        "```yaml",
        "train: {epochs: 20, batch_size: 512}",
        "model:",
        "  image: {freeze: last:1}",
        "```",
        "",
        "A run folder keeps the resolved settings as `config.yaml`, so "
        "`crossalign train --config RUN/config.yaml` repeats a run.",
        "",
    ]
    for name, doc, rows in sections:
        level = "#" * (2 + name.count("."))
        out += [f"{level} {name}", ""]
        if doc:
            out += [_escape(doc), ""]
        out += ["| setting | type | default | what |", "| --- | --- | --- | --- |"]
        out += [f"| `{n}` | `{t}` | `{d}` | {_escape(text, table=True)} |"
                for n, t, d, text in rows]
        out.append("")
    return "\n".join(out)


# ---- commands ------------------------------------------------------------------------------------


def _escape(text: str, table: bool = False) -> str:
    """Plain help text as Markdown: no accidental HTML, emphasis or table cells."""
    text = " ".join(text.split()).replace("<", "&lt;").replace("*", r"\*")
    return text.replace("|", r"\|") if table else text


def _subcommands(parser: argparse.ArgumentParser):
    """``[(name, parser, one-line help)]`` of the parser's subcommands, in the order added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return []


def walk_commands(parser, path=()):
    """``[(path, parser, one-line help)]`` of every command below ``parser``, depth first."""
    found = []
    for name, sub, help_text in _subcommands(parser):
        found.append(((*path, name), sub, help_text))
        found.extend(walk_commands(sub, (*path, name)))
    return found


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flag_default(action: argparse.Action) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x: name the default
        return f"`{action.option_strings[0 if action.default else 1]}`"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, "", []):
        return ""
    return f"`{action.default}`"


def _flag_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    formatter = argparse.HelpFormatter("crossalign")
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return f"`{names} {metavar}`"


def flag_tables(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    formatter = argparse.HelpFormatter(parser.prog)
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        title = {"options": "Options", "positional arguments": "Arguments"}.get(group.title)
        out += [f"**{title or group.title.capitalize()}**", ""]
        out += ["| flag | default | what |", "| --- | --- | --- |"]
        for a in actions:
            help_text = formatter._expand_help(a) if a.help else ""
            required = " (required)" if a.option_strings and a.required else ""
            out.append(f"| {_flag_name(a)} | {_flag_default(a)} | "
                       f"{_escape(help_text + required, table=True)} |")
        out.append("")
    return out


def check_examples(parser: argparse.ArgumentParser, commands: list) -> None:
    """Every runnable command has an example, every example a command, and each one parses."""
    runnable = {" ".join(path) for path, sub, _ in commands if not _subcommands(sub)}
    missing = sorted(runnable - set(EXAMPLES))
    stale = sorted(set(EXAMPLES) - runnable)
    problems = []
    if missing:
        problems.append(f"no example for command(s) {', '.join(missing)}")
    if stale:
        problems.append(f"examples of command(s) that no longer exist: {', '.join(stale)}")
    for name, line in EXAMPLES.items():
        if name in stale:
            continue
        argv = shlex.split(line)
        if argv[:1 + len(name.split())] != ["crossalign", *name.split()]:
            problems.append(f"the example of {name!r} does not start with 'crossalign {name}'")
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv[1:])
        except SystemExit:
            last = err.getvalue().strip().splitlines()[-1:] or ["refused"]
            problems.append(f"the example of {name!r} does not parse: {last[0]}")
    if problems:
        raise ReferenceError("EXAMPLES in docs/gen_reference.py: " + "; ".join(problems)
                             + " (one example per command, keyed by its name as typed)")


def commands_page() -> str:
    from crossalign.cli.main import build_parser

    parser = build_parser()
    commands = walk_commands(parser)
    check_examples(parser, commands)
    out = [
        "# Commands",
        "",
        "<!-- Generated by docs/gen_reference.py from the crossalign parser; do not edit. -->",
        "",
        "Every command of the `crossalign` console script, with its flags and one example. "
        "`crossalign COMMAND --help` prints the same. Before any command, `-q` (`--quiet`) "
        "turns progress bars off.",
        "",
        "| command | what |",
        "| --- | --- |",
    ]
    for path, _, help_text in commands:
        name = " ".join(path)
        out.append(f"| [`{name}`](#{'-'.join(path)}) | {_escape(help_text, table=True)} |")
    out.append("")
    for path, sub, help_text in commands:
        name = " ".join(path)
        out += [f"{'#' * (1 + len(path))} {name}", ""]
        description = sub.description or help_text
        if description:
            out += [_escape(description[0].upper() + description[1:]), ""]
        children = _subcommands(sub)
        if children:
            out += ["Subcommands: " + ", ".join(f"[`{name} {c}`](#{'-'.join((*path, c))})"
                                                for c, _, _ in children) + ".", ""]
            continue
        out += ["```text", usage(sub), "```", ""]
        out += ["Example:", "", "```bash", EXAMPLES[name], "```", ""]
        out += flag_tables(sub)
    return "\n".join(out).rstrip() + "\n"


# ---- the Python API ------------------------------------------------------------------------------


def _api_path(package, name: str) -> str:
    """The dotted path mkdocstrings reads ``crossalign.NAME`` from: where the object is defined
    (statically, ``crossalign.train`` is also the name of the training subpackage)."""
    obj = getattr(package, name, None)
    if obj is None:
        raise ReferenceError(f"crossalign.__all__ names {name!r}, which crossalign does not define")
    api = getattr(package, "api", None)
    if api is not None and getattr(api, name, None) is obj:
        return f"crossalign.api.{name}"
    return f"{obj.__module__}.{obj.__qualname__}"


def api_page() -> str:
    import crossalign

    out = [
        "# Python API",
        "",
        "<!-- Generated by docs/gen_reference.py from crossalign.__all__; do not edit. -->",
        "",
        "`import crossalign` gives one function per command, with the command's name, parameters "
        "and defaults, and `crossalign.load` for a trained model. This page is read from the "
        "docstrings of what `crossalign.__all__` lists.",
        "",
        "::: crossalign",
        "    options:",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "      members: false",
        "",
    ]
    for name in crossalign.__all__:
        if name == "__version__":
            out += ["`crossalign.__version__` is the version of the package.", ""]
            continue
        out += [f"::: {_api_path(crossalign, name)}",
                "    options:",
                f'      heading: "crossalign.{name}"',
                f'      toc_label: "{name}"',
                "      heading_level: 2",
                ""]
    return "\n".join(out)


# ---- writing -------------------------------------------------------------------------------------


def pages() -> dict[Path, str]:
    """The generated pages, by path: what is committed must equal this."""
    return {REFERENCE / "settings.md": settings_page(), REFERENCE / "commands.md": commands_page(),
            ROOT / "docs" / "api.md": api_page()}


def main() -> int:
    from crossalign._io import atomic_write_text

    try:
        generated = pages()
    except ReferenceError as e:
        print(f"gen_reference: {e}", file=sys.stderr)
        return 1
    for path, text in generated.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
