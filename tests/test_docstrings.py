"""Every name a docstring of the library points to exists: ``:func:`crossalign.x.y```, a
``:class:`` or ``:mod:`` role, or a bare ``:func:`name``` of the module's own namespace."""

import ast
import importlib
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc):`~?([A-Za-z_][\w.]*)(?:\(\))?`")


def _resolve(dotted: str, home):
    """The object ``dotted`` names, from the package root or from ``home``'s namespace."""
    if dotted.startswith("crossalign"):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:]:
                obj = getattr(obj, name)
            return obj
        raise ImportError(dotted)
    obj = home
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def test_every_name_a_docstring_points_to_exists():
    missing = []
    for path in sorted((SRC / "crossalign").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        rel = path.relative_to(SRC).with_suffix("")
        modname = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        module = importlib.import_module(modname)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef,
                                                                     ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            home = module
            if isinstance(node, ast.ClassDef) and hasattr(module, node.name):
                home = getattr(module, node.name)
            for name in ROLE.findall(doc):
                try:
                    _resolve(name, home)
                except (AttributeError, ImportError):
                    try:
                        _resolve(name, module)
                    except (AttributeError, ImportError):
                        missing.append(f"{path.relative_to(SRC)}: {name}")
    assert not missing, "\n".join(missing)
