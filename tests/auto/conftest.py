"""Fixtures for the strategy search: small, fast search settings on tiny-llama."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

FAST: dict[str, Any] = {
    "trials": 4,
    "eta": 2,
    "finalists": 2,
    "recovery_tokens": 128,
    "recovery": {"seq_len": 32, "micro_batch_size": 2},
    "eval_tokens": 256,
    "eval_seq_len": 64,
    "proxy_tokens": 128,
    "proxy_dtype": "float32",
    "calib_samples": 4,
    "calib_seq_len": 32,
    "progress": False,
}
"""Four candidates screened, two finalists, two recovery steps each: seconds per candidate."""


def fast_flags() -> list[str]:
    """FAST as `llmopt auto` flags."""
    flags = []
    for key, value in FAST.items():
        if key == "recovery":
            for name, item in value.items():
                flags += ["--recovery", f"{name}={item}"]
        elif key == "progress":
            flags.append("--no-progress")
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def run_search(model: str | Path, folder: Path, budget: str, **changes: Any):
    """`auto_search` with the FAST settings (and `changes`)."""
    from llmopt.auto import auto_search

    return auto_search(model, folder, budget, {**FAST, **changes})


@pytest.fixture(scope="module")
def searches(tmp_path_factory) -> dict[str, Any]:
    """One finished search per size budget (run once for the module that asks); the
    nonzero=0.5 search keeps every candidate's run folder."""
    root = tmp_path_factory.mktemp("auto")
    return {
        budget: run_search(
            "tiny-llama",
            root / budget.replace("=", "-"),
            budget,
            keep_candidates=budget == "nonzero=0.5",
        )
        for budget in ("params=0.7", "nonzero=0.5", "bytes=0.4")
    }
