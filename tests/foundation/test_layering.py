"""The import graph points down: foundation <- techniques <- pipeline <- cli.

Each technique is one folder that imports no other technique; they meet in the
pipeline (and distillation in the trainer's objective seam). This test reads
the source with `ast`, so a forbidden import fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llmopt

ROOT = Path(llmopt.__file__).parent
FOUNDATION = {"config", "errors", "stage", "formats", "outputs", "provenance", "units", "cache",
              "sparsity", "runtime", "models", "data", "evaluate", "calibrate"}  # fmt: skip
TECHNIQUES = {"prune", "slim", "share", "quantize", "reconstruct", "distill"}
TOP = {"pipeline", "api", "report", "auto", "cli", "export", "recipes"}
ALLOWED = {"distill": {"train"}}
"""Distillation is the trainer with another objective: the one technique that builds on it."""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmopt."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("llmopt.")}
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


MODULES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    part = _part(path)
    imported = _imports(path) - {part}
    if part != "cli":
        assert "cli" not in imported, f"{path}: only llmopt.cli may import llmopt.cli"
    if part in FOUNDATION or part == "train":
        bad = imported & (TECHNIQUES | TOP | ({"train"} if part != "train" else set()))
        assert not bad, f"{path}: foundation imports {sorted(bad)}"
    if part in TECHNIQUES:
        bad = imported & ((TECHNIQUES | TOP | {"train"}) - ALLOWED.get(part, set()))
        assert not bad, f"{path}: technique {part} imports {sorted(bad)}"


def test_every_module_is_classified():
    parts = {_part(p) for p in MODULES} - {"__init__", "py"}
    assert parts <= FOUNDATION | TECHNIQUES | TOP | {"train"}, parts - (
        FOUNDATION | TECHNIQUES | TOP
    )
