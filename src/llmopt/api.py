"""The Python API: the same stages as the command line, with the same keys.

    import llmopt
    from llmopt.api import prune, distill

    out = prune("smollm2-135m", "runs/wanda", method="wanda", sparsity=0.5)
    out.output, out.metrics["after"]["perplexity"]
    model = llmopt.load_model(out.output)          # any llmopt format

Every registered stage is a function here, `NAME(model, output=None, *,
overwrite=False, **config)`, whose keywords are the stage config's keys (the
verb's flags with '_' for '-'); it returns a `StageOutcome` (output folder,
record, metrics). `llmopt.run_stage(name, ...)` is the same by name, and
`llmopt.run_recipe(path)` runs a recipe. (The functions live in `llmopt.api`,
not on `llmopt` itself, because `llmopt.prune` is the pruning package.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmopt.pipeline.formats import load_checkpoint as load_model
from llmopt.pipeline.run import run_recipe
from llmopt.pipeline.runner import StageOutcome, run_stage


def stage_function(name: str) -> Callable[..., StageOutcome | None]:
    """`llmopt.<name>`: run the stage called `name` (see `run_stage` for the arguments).

    Raises:
        BadInput: no stage has that name.
    """
    from llmopt.pipeline.runner import stage_class

    cls = stage_class(name)

    def run(
        model: str | Path,
        output: str | Path | None = None,
        *,
        overwrite: bool = False,
        **config: Any,
    ) -> StageOutcome | None:
        return run_stage(cls, model, output, config, overwrite=overwrite)

    run.__name__ = name
    run.__doc__ = f"{cls.help}. Keywords: the keys of {cls.config_class.__name__}."
    return run


def _stage_names() -> list[str]:
    from llmopt.pipeline.registry import STAGES

    return list(STAGES)


for _name in _stage_names():
    globals()[_name] = stage_function(_name)

__all__ = [
    "StageOutcome",
    "load_model",
    "run_recipe",
    "run_stage",
    "stage_function",
    *_stage_names(),
]
