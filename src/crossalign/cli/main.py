"""The ``crossalign`` console script: one parser, one module per command.

Heavy libraries are imported inside the command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from crossalign.errors import CrossalignError

__all__ = ["main", "COMMANDS"]

# command name -> module under crossalign.cli that defines add_parser(sub) and run(args)
COMMANDS = {
    "train": "train",
    "tune": "tune",
    "evaluate": "evaluate",
    "zeroshot": "zeroshot",
    "data": "data",
    "report": "report",
    "models": "models",
    "index": "index",
    "search": "search",
    "serve": "serve",
    "duplicates": "duplicates",
    "explain": "explain",
    "embed": "embed",
    "caption": "caption",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossalign", description="Train, evaluate and serve CLIP-style image-text alignment.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(f"crossalign.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(message)s", force=True)
    try:
        return int(args.func(args) or 0)
    except CrossalignError as e:  # the user's to fix: one line; anything else is a bug (traceback)
        print(f"crossalign {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # a full, read-only or forbidden disk is the user's to fix, not a bug
        from crossalign._io import DISK_ERRNOS

        if e.errno not in DISK_ERRNOS:
            raise
        print(f"crossalign {args.command}: error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
