"""Fixtures for the stage contract, recipes and runs: a fast recipe on tiny-llama."""

from __future__ import annotations

from pathlib import Path

import pytest

FAST_EVAL = {"max_tokens": 256, "seq_len": 64, "speed": False, "sample": False}


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe (a dict) as YAML and return its path."""
    import yaml

    def write(data: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
