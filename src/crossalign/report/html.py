"""HTML assembly: one Jinja2 template, every value escaped (captions are user data)."""

from __future__ import annotations

from importlib import resources

__all__ = ["render", "TEMPLATE"]

TEMPLATE = "template.html"


def _environment():
    import jinja2

    # autoescape everything: a caption like "<script>" must show as text, never run
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def render(context: dict) -> str:
    """The report page for ``context`` (built by :func:`crossalign.report.build.report`)."""
    source = resources.files("crossalign.report").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return _environment().from_string(source).render(**context)
