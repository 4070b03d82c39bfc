"""llmopt: make language models smaller and cheaper to train, and measure it.

The Python API (`llmopt.api`) is loaded on first use, so `import llmopt` stays
cheap: `llmopt.run_stage(name, model, output, **keys)`, `llmopt.run_recipe(path)`,
`llmopt.load_model(path)`; one function per stage in `llmopt.api` (`prune`,
`distill`, ...).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_API = ("load_model", "run_stage", "run_recipe", "StageOutcome")


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'llmopt' has no attribute {name!r}")
    from llmopt import api

    return getattr(api, name)
