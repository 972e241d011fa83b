"""Gallery rows explained: for each query, why its first hit came first (heat over the image,
the words of the text shaded by their part in the similarity)."""

from __future__ import annotations

from crossalign.errors import ImageError

__all__ = ["explain_rows", "shaded_words"]


def shaded_words(words: list[str], scores: list[float], shares: list[float]) -> list[dict]:
    """Per word: the CSS background (red raised the similarity, blue lowered it) and a tooltip."""
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    out = []
    for w, s, sh in zip(words, scores, shares):
        a = min(abs(s) / top, 1.0)
        rgb = "214, 39, 40" if s >= 0 else "31, 119, 180"
        out.append({"word": w, "bg": f"rgba({rgb}, {a:.2f})", "title": f"{s:+.4f} ({sh:.0%})"})
    return out


def _why(model, image_path: str, text: str, method: str, max_pixels: int, size: int) -> dict | None:
    from crossalign.explain.pair import explain_pair
    from crossalign.explain.render import overlay_uri

    try:
        e = explain_pair(model, image_path, text, method, max_pixels=max_pixels)
    except ImageError:
        return None  # the file went away since it was embedded: the row shows no explanation
    return {"uri": overlay_uri(e, size), "sim": e.similarity, "method": method,
            "words": shaded_words(e.words.words, e.words.scores, e.words.shares())}


def explain_rows(model, gal: dict, n: int, method: str = "layercam", max_pixels: int = 0,
                 size: int = 128) -> int:
    """Add ``why`` to the first ``n`` queries of each gallery (``n`` < 0: all); returns how many
    pairs were explained. Text query: its caption and its first image; image query: the image
    and its first caption."""
    paths, done = gal["paths"], 0
    rows = [(q, paths[q["hits"][0]["image"]], q["caption"]) for q in gal["text_queries"] if q["hits"]]
    rows2 = [(q, paths[q["image"]], q["hits"][0]["caption"]) for q in gal["image_queries"] if q["hits"]]
    for group in (rows, rows2):
        for q, path, text in group[:len(group) if n < 0 else n]:
            q["why"] = _why(model, path, text, method, max_pixels, size)
            done += q["why"] is not None
    return done
