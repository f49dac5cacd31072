"""The layers, read from the source (every import statement, at the top of
a module or inside a function): `analysis/` imports neither the tracer nor
bcc nor textual; the tracer imports neither the analysis nor the TUI; the
schema, which both import, imports none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder -> what its modules must not import (module prefixes)
RULES = {
    "analysis": ("rsttrace.tracer", "bcc", "textual", "rsttrace.tui"),
    "tracer": ("rsttrace.analysis", "rsttrace.tui", "textual"),
    "schema": ("rsttrace.tracer", "rsttrace.analysis", "rsttrace.tui", "bcc", "textual", "numpy", "pandas"),
}
# the folders' import packages (pyproject.toml maps each folder to one)
PACKAGES = {"analysis": "rsttrace.analysis", "tracer": "rsttrace.tracer", "schema": "rsttrace.schema",
            "tui": "rsttrace.tui"}


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:      # relative: from the module's own package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from . import x`: x is a module; `from m import x`: x is in m
            out += [(node.lineno, mod if node.module else f"{mod}.{a.name}") for a in node.names]
    return out


def violations(folder: str, root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, mod in imports(path, PACKAGES[folder]):
            if any(mod == p or mod.startswith(p + ".") for p in RULES[folder]):
                bad.append(f"{path.relative_to(root)}:{line}: imports {mod}")
    return bad


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layers(folder):
    assert violations(folder) == []


def test_the_scan_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "analysis"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from rsttrace.tracer import events\n")
    (pkg / "b.py").write_text("from ..tracer.session import TraceSession\n")
    (pkg / "c.py").write_text("import bcc\nfrom .safe import printable\nfrom .. import tracer\n")
    assert [v.split(": ", 1)[1] for v in violations("analysis", tmp_path)] == [
        "imports rsttrace.tracer", "imports rsttrace.tracer.session", "imports bcc", "imports rsttrace.tracer"]
