"""Recipes shipped with llmopt; `llmopt run NAME` finds them by file name (without .yaml)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent


def shipped() -> dict[str, Path]:
    """Every shipped recipe by name."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.yaml"))}
