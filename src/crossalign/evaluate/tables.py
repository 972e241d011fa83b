"""The evaluation's metrics as text and as HTML: the tables ``crossalign evaluate`` prints, and
:class:`Metrics`, the dict ``crossalign.evaluate`` returns, which prints as those tables and shows
as an HTML table in a notebook."""

from __future__ import annotations

import html

__all__ = ["Metrics", "format_metrics", "format_table", "format_ranking", "format_seed",
           "format_labels", "format_gap", "format_wise", "metric_ks"]

DIRECTIONS = (("t2i", "text->image"), ("i2t", "image->text"))


def _fmt_rank(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _table_rows(metrics: dict, ks: list[int]) -> tuple[list[str], list[list[str]]]:
    """The head and rows of the metrics table: each direction, its chance level under it."""
    head = ["direction"] + [f"R@{k}" for k in ks] + ["median rank", "mean rank", "MRR"]
    chance = metrics.get("chance", {})
    rows = []
    for d, label in DIRECTIONS:
        for name, src in ((label, metrics), ("  chance", chance)):
            if not src:
                continue
            rows.append([name] + [f"{src[f'{d}_R@{k}']:.2f}" for k in ks]
                        + [_fmt_rank(src[f"{d}_median_rank"]), f"{src[f'{d}_mean_rank']:.1f}",
                           f"{src[f'{d}_mrr']:.3f}"])
    return head, rows


def _table_footer(metrics: dict) -> str:
    chance = metrics.get("chance", {})
    tail = f" (chance {chance['rsum']:.1f})" if chance else ""
    return (f"{metrics['n_images']} images, {metrics['n_captions']} captions ({metrics['split']} split); "
            f"rsum {metrics['rsum']:.1f}{tail}")


def format_table(metrics: dict, ks: list[int]) -> str:
    """Metrics as a small text table: one row per direction, the chance level under each."""
    head, rows = _table_rows(metrics, ks)
    widths = [max(len(str(r[c])) for r in [head] + rows) for c in range(len(head))]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(_table_footer(metrics))
    return "\n".join(out)


def format_ranking(info: dict) -> str:
    """One line naming how the scores were ranked."""
    if info["name"] != "qbnorm":
        return "ranking: plain cosine" + (f" ({info['note']})" if "note" in info else "")
    bank = info["bank"]
    return (f"ranking: qbnorm (beta {info['beta']:g}, k {info['k']}; bank of {bank['images']} train images "
            f"and {bank['captions']} captions)")


def format_seed(proto: dict) -> str:
    """The seed protocol's top-1 accuracies beside chance."""
    out = ["\nseed protocol (plain cosine, every query ranked among all items):"]
    for part, label in (("all", "all items"), ("held_out", "held-out items")):
        if part in proto:
            m = proto[part]
            out.append(f"  {label} ({m['n_images']} images, {m['n_captions']} captions): top-1 text->image "
                       f"{m['t2i_top1']:.2f} (chance {m['chance']['t2i_top1']:.2f}), image->text "
                       f"{m['i2t_top1']:.2f} (chance {m['chance']['i2t_top1']:.2f})")
    return "\n".join(out)


def format_labels(labels: dict, ks: list[int], per_class: int = 10) -> str:
    """Label agreement beside chance, both directions, and the largest classes."""
    head = ["direction"] + [f"P@{k}" for k in ks] + ["R-prec", "MAP@R"]
    rows = []
    for d, label in DIRECTIONS:
        m = labels[d]
        keys = [f"precision@{k}" for k in ks] + ["r_precision", "map@r"]
        rows.append([label] + [f"{m[k]:.3f}" for k in keys])
        rows.append(["  chance"] + [f"{m['chance'][k]:.3f}" for k in keys])
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]
    line = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    t2i = labels["t2i"]
    out = [f"\nlabel agreement by {labels['column']!r} ({t2i['classes']} classes; relevant = shares a class; "
           f"{t2i['queries_unlabelled']} captions and {labels['i2t']['queries_unlabelled']} images without a label "
           f"left out as queries):", line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    k = ks[-1]
    biggest = sorted(t2i["per_class"].items(), key=lambda kv: -kv[1]["queries"])[:per_class]
    if biggest:
        out.append(f"per class, text->image P@{k} (chance): " + ", ".join(
            f"{name} {m[f'precision@{k}']:.2f} ({m['chance_precision']:.2f})" for name, m in biggest))
    return "\n".join(out)


def format_gap(metrics: dict, ks: list[int]) -> str:
    """The seen and unseen tables and the gap in R@K points."""
    proto = metrics["gap_protocol"]
    out = [f"\nseen (trained on): {proto['seen_images_used']} of {proto['seen_images_available']} train images "
           f"(sampling {proto['sampling']}, seed {proto['seed']})", format_table(metrics["seen"], ks),
           "\nunseen (held out):", format_table(metrics["unseen"], ks)]
    gap = metrics["gap"]
    parts = [f"{d} R@{k} {gap[f'{d}_R@{k}']:+.1f}" for d in ("t2i", "i2t") for k in ks]
    out.append("\ngeneralization gap (seen - unseen, points): " + ", ".join(parts))
    return "\n".join(out)


def format_wise(sweep: dict[str, dict], ks: list[int], title: str) -> str:
    """One row per alpha: R@K both ways and the R-sum."""
    head = ["alpha"] + [f"t2i R@{x}" for x in ks] + [f"i2t R@{x}" for x in ks] + ["rsum"]
    rows = [[name] + [f"{m[f't2i_R@{x}']:.2f}" for x in ks] + [f"{m[f'i2t_R@{x}']:.2f}" for x in ks]
            + [f"{sum(m[f't2i_R@{x}'] + m[f'i2t_R@{x}'] for x in ks):.1f}"] for name, m in sweep.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    return "\n".join([title] + lines)


def metric_ks(metrics: dict) -> list[int]:
    """The K of Recall@K that ``metrics`` holds (its ``t2i_R@K`` keys), smallest first."""
    return sorted(int(key[len("t2i_R@"):]) for key in metrics
                  if key.startswith("t2i_R@") and key[len("t2i_R@"):].isdigit())


def _below_table(metrics: dict, ks: list[int]) -> list[str]:
    """What ``crossalign evaluate`` prints under the table: the ranking, and the label
    agreement, generalisation gap and seed protocol when the metrics hold them."""
    out = [format_ranking(metrics["ranking"])]
    if "labels" in metrics:
        out.append(format_labels(metrics["labels"], ks))
    if "gap_protocol" in metrics:
        out.append(format_gap(metrics, ks))
    if "seed_protocol" in metrics:
        out.append(format_seed(metrics["seed_protocol"]))
    return out


def format_metrics(metrics: dict, ks: list[int] | None = None) -> str:
    """Everything ``crossalign evaluate`` prints for one evaluation (``ks``: default, the K the
    metrics hold)."""
    ks = metric_ks(metrics) if ks is None else ks
    return "\n".join([format_table(metrics, ks)] + _below_table(metrics, ks))


def _html_table(metrics: dict, ks: list[int]) -> str:
    """The metrics table as HTML: chance rows in grey under their direction."""
    head, rows = _table_rows(metrics, ks)
    cell = 'style="padding:2px 8px;text-align:{}"'
    ths = "".join(f"<th {cell.format('left' if i == 0 else 'right')}>{html.escape(h)}</th>"
                  for i, h in enumerate(head))
    body = []
    for row in rows:
        grey = ' style="color:#777"' if row[0] == "  chance" else ""
        name = html.escape(row[0]).replace(" ", "&nbsp;")
        tds = "".join(f"<td {cell.format('right')}>{html.escape(v)}</td>" for v in row[1:])
        body.append(f"<tr{grey}><td {cell.format('left')}>{name}</td>{tds}</tr>")
    return (f'<table class="crossalign-metrics"><caption style="caption-side:bottom;text-align:left">'
            f"{html.escape(_table_footer(metrics))}</caption><thead><tr>{ths}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


class Metrics(dict):
    """The retrieval metrics of one evaluation: a plain dict (``m["t2i_R@1"]``, JSON as it is)
    that prints as the tables ``crossalign evaluate`` prints and shows as an HTML table in a
    notebook."""

    @property
    def ks(self) -> list[int]:
        """The K of Recall@K measured."""
        return metric_ks(self)

    def _complete(self) -> bool:
        keys = ("n_images", "n_captions", "split", "rsum", "ranking")
        return bool(self.ks) and all(key in self for key in keys)

    def __str__(self) -> str:
        return format_metrics(self) if self._complete() else dict.__repr__(self)

    def _repr_pretty_(self, p, cycle: bool) -> None:  # IPython's plain-text display
        p.text(str(self))

    def _repr_html_(self) -> str:
        if not self._complete():
            return f"<pre>{html.escape(dict.__repr__(self))}</pre>"
        below = "\n".join(_below_table(self, self.ks))
        return f"<div>{_html_table(self, self.ks)}<pre>{html.escape(below)}</pre></div>"
