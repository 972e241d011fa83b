"""``crossalign check``: everything wrong with a data set, in one report.

The check reads the data with the same reader, validation and split as training, then
decodes every image through the same door training uses, and adds what only a
whole-collection view shows:

========================== ======= ====================================================
kind                       level   meaning
========================== ======= ====================================================
non_utf8, bad_row          error   a line the reader could not use (row skipped)
empty_caption              error   empty or whitespace-only caption (row skipped)
missing_image              error   a caption whose image file is not there (skipped)
outside_data               error   an image path or link that leaves the data folder (not read)
empty_file                 error   zero-byte image file (its rows skipped)
truncated_image            error   image data ends early (its rows skipped)
unreadable_image           error   not an image Pillow can decode (its rows skipped)
too_large_image            error   over ``data.max_pixels`` pixels (its rows skipped)
bad_shard                  error   a damaged tar shard (the rest of it skipped)
no_pairs                   error   nothing usable at all
duplicate_pair             warning the same image and caption again (kept)
long_caption               warning more tokens than the text tower reads (kept, truncated)
tiny_image                 warning shorter side under ``data.min_image_side`` (kept)
image_without_caption      warning an image file no caption uses (not used)
========================== ======= ====================================================
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from crossalign.config import DataConfig
from crossalign.data.formats import read_pairs
from crossalign.data.prepare import split_table
from crossalign.data.transforms import list_images
from crossalign.data.table import PairTable
from crossalign.errors import ImageError
from crossalign.data.validate import Problem, check_images, drop_failed_images, validate_rows

__all__ = ["check_data", "format_report"]

_WORDS = re.compile(r"\w+|[^\w\s]")


def _image_problems(table: PairTable, cfg: DataConfig, workers: int) -> tuple[PairTable, list[Problem]]:
    """Decode every image: the rows of a bad one are dropped with one problem per row (as
    training and evaluation drop them), a tiny one gets a warning at its first row."""
    _, paths = table.images()
    first: dict[str, str] = {}
    for path, origin in zip(table.image_path, table.origin):
        first.setdefault(path, origin)
    failed, warnings = {}, []
    for chk in check_images(paths, cfg.max_pixels, workers):
        if chk.kind:
            failed[chk.path] = ImageError(chk.message, chk.kind)
        elif min(chk.width, chk.height) < cfg.min_image_side:
            warnings.append(Problem("tiny_image", first[chk.path], f"{chk.path}: {chk.width}x{chk.height} "
                                    f"pixels, under data.min_image_side={cfg.min_image_side}; kept", "warning"))
    table, problems = drop_failed_images(table, failed, by="image_path")
    return table, problems + warnings


def _caption_warnings(table: PairTable, max_tokens: int, make_counter: Callable) -> tuple[list[Problem], str]:
    """Duplicate pairs and captions over the token limit."""
    problems, seen = [], {}
    for iid, cap, origin in zip(table.image_id, table.caption, table.origin):
        key = (iid, cap)
        if key in seen:
            problems.append(Problem("duplicate_pair", origin, f"same image and caption as {seen[key]}; kept",
                                    "warning"))
        else:
            seen[key] = origin
    # a token covers at least one byte, so only captions longer than the limit in bytes can exceed it
    long = [i for i, c in enumerate(table.caption) if len(c.encode("utf-8")) > max_tokens - 2]
    counter = make_counter() if long else None
    how = "tokenizer" if counter else "estimate"
    for i in long:
        n = counter(table.caption[i]) if counter else len(_WORDS.findall(table.caption[i])) + 2
        if n > max_tokens:
            est = "" if counter else "about "
            problems.append(Problem("long_caption", table.origin[i], f"caption has {est}{n} tokens ("
                                    f"{len(table.caption[i])} characters), over the text tower's limit of "
                                    f"{max_tokens}; kept, truncated when encoded", "warning"))
    return problems, how


def _uncaptioned(table: PairTable, referenced: list[str]) -> list[Problem]:
    """Image files in the layout's image folders that no row (good or bad) names."""
    used = {os.path.normpath(p) for p in referenced}
    found = [str(p) for d in table.meta.get("image_dirs", []) if Path(d).is_dir() for p in list_images(Path(d))]
    unused = [p for p in found if os.path.normpath(p) not in used] + list(table.meta.get("uncaptioned", []))
    return [Problem("image_without_caption", p, "image has no caption; not used", "warning") for p in unused]


def _per_image(table: PairTable) -> dict:
    counts = Counter(table.image_id).values()
    if not counts:
        return {"min": 0, "max": 0, "mean": 0.0, "histogram": {}}
    hist = Counter(counts)
    return {"min": min(counts), "max": max(counts), "mean": round(sum(counts) / len(counts), 3),
            "histogram": {str(k): hist[k] for k in sorted(hist)}}


def check_data(path: str | Path, cfg: DataConfig | None = None, max_tokens: int = 256,
               make_counter: Callable[[], Callable[[str], int] | None] = lambda: None,
               images: bool = True, workers: int = 0, examples: int = 1000) -> dict:
    """Check a data set and return the report (see the module docstring for the kinds).

    Args:
        path: data folder or file, any supported layout.
        cfg: reader and split options; ``strict`` is ignored here (every problem is reported).
        max_tokens: the text tower's token limit.
        make_counter: builds the tower's token counter (called only if a caption may be too long).
        images: decode every image (the slow part); off checks only that files exist.
        workers: processes for decoding (0 = one per CPU core).
        examples: at most this many problems are listed one by one.
    """
    t0 = time.perf_counter()
    cfg = dataclasses.replace(cfg or DataConfig(), strict=False)
    raw = read_pairs(path, cfg.format, cfg)
    table, problems = validate_rows(raw, strict=False)
    split_table(table, cfg)
    rows_read = len(table) + sum(p.level == "error" for p in problems)
    if images:
        table, found = _image_problems(table, cfg, workers)
        problems += found
    warnings, how = _caption_warnings(table, max_tokens, make_counter)
    problems += warnings + _uncaptioned(table, raw.image_path)
    if not len(table):
        problems.append(Problem("no_pairs", str(path), "no usable image-caption pair"))
    errors = [p for p in problems if p.level == "error"]
    return {
        "path": str(path), "format": table.meta.get("format", ""),
        "images": len(set(table.image_id)), "captions": len(table),
        "rows_read": rows_read, "rows_skipped": rows_read - len(table),
        "splits": table.split_counts(), "splits_given": bool(table.meta.get("splits_given")),
        "captions_per_image": _per_image(table),
        "errors": dict(Counter(p.kind for p in errors)),  # rows skipped, by kind (count_skipped)
        "warnings": dict(Counter(p.kind for p in problems if p.level != "error")),
        "problems": [p.to_dict() for p in problems[:examples]], "problems_total": len(problems),
        "checks": {"images_decoded": images, "max_pixels": cfg.max_pixels, "min_image_side": cfg.min_image_side,
                   "max_tokens": max_tokens, "token_count": how},
        "ok": not errors, "seconds": round(time.perf_counter() - t0, 2),
    }


def _split_lines(splits: dict) -> list[str]:
    lines = [f"  {'split':<12}{'images':>9}{'captions':>10}"]
    order = ["train", "val", "test", "unassigned"]
    for name in sorted(splits, key=lambda s: order.index(s) if s in order else 9):
        lines.append(f"  {name:<12}{splits[name]['images']:>9,}{splits[name]['captions']:>10,}")
    return lines


def _kind_lines(title: str, counts: dict, problems: list[dict], level: str, limit: int) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    lines = [f"{title}: " + ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))]
    wanted = [p for p in problems if (p["level"] == "error") == (level == "error")]
    lines += [f"  {p['where']}: {p['detail']}" for p in wanted[:limit]]
    if sum(counts.values()) > limit:
        lines.append(f"  ... and {sum(counts.values()) - limit:,} more (all in the JSON report)")
    return lines


def format_report(report: dict, limit: int = 10) -> str:
    """The report as text for a terminal."""
    cpi = report["captions_per_image"]
    per = (f"{cpi['min']} for every image" if cpi["min"] == cpi["max"]
           else f"min {cpi['min']}, mean {cpi['mean']}, max {cpi['max']}")
    given = "given" if report["splits_given"] else "seeded, by image"
    lines = [f"{report['path']} ({report['format']}): {report['images']:,} images, {report['captions']:,} captions "
             f"({report['rows_read']:,} rows read, {report['rows_skipped']:,} skipped)",
             f"splits ({given}):", *_split_lines(report["splits"]), f"captions per image: {per}"]
    lines += _kind_lines("problems (rows skipped)", report["errors"], report["problems"], "error", limit)
    lines += _kind_lines("warnings (rows kept)", report["warnings"], report["problems"], "warning", limit)
    lines.append(f"checked in {report['seconds']:.1f} s")
    return "\n".join(lines)
