"""The ``crossalign`` console script: one parser, one module per command.

Heavy libraries are imported inside the command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import os
import sys

from crossalign.errors import CrossalignError

__all__ = ["main", "build_parser", "keep_freed_memory"]

# the modules under crossalign.cli, each with add_parser(sub) for its commands; every command calls
# the function of its name in crossalign.api (check.py holds check, convert and synth)
MODULES = ["train", "tune", "evaluate", "zeroshot", "report", "index", "search", "serve", "duplicates",
           "explain", "caption", "embed", "export", "check", "towers"]


# commands that run towers over many images (extraction, training): their freed memory stays with
# them (see keep_freed_memory). Not the service, which lives on, nor index and search, whose large
# arrays grow by copies that a never-trimmed heap would keep as holes.
_KEEP_FREED = {"train", "tune", "evaluate", "embed", "zeroshot", "report", "caption", "explain"}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks instead of giving them back to the system.

    PyTorch on the CPU allocates every large tensor (a batch of pixels, a block's activations)
    with malloc, and glibc serves blocks over 32 MB with a fresh ``mmap`` and returns them with
    ``munmap`` when freed: each training step or extraction batch then faults in, and the kernel
    zeroes, gigabytes of new pages, a large share of the CPU time of a frozen tower's extraction
    or of a step through a tower's last blocks (bench/RESULTS.md). Served from the heap and never
    trimmed, the same blocks are reused. The price is memory: the process keeps its peak heap
    until it exits (bench/RESULTS.md has both figures). Off with ``CROSSALIGN_MALLOC=system``;
    a no-op where the C library is not glibc. Returns whether it was set.
    """
    if os.environ.get("CROSSALIGN_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc's alone: the parameters below are its own
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap for large blocks, and no trimming of the heap's top (-1: never)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossalign", description="Train, evaluate and serve CLIP-style image-text alignment.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in MODULES:
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
    if args.command in _KEEP_FREED:
        keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except CrossalignError as e:  # the user's to fix: one line; anything else is a bug (traceback)
        from crossalign.cli._call import as_flags

        print(f"crossalign {args.command}: error: {as_flags(' '.join(str(e).split()))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full, read-only or forbidden disk is the user's to fix, not a bug
        from crossalign._io import DISK_ERRNOS

        if e.errno not in DISK_ERRNOS:
            raise
        print(f"crossalign {args.command}: error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
