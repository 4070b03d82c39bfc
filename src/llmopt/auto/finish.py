"""The end of a search: choose the winner, write it out, and check its budget on the output.

The winner is the finalist with the lowest held-out perplexity after the full
recovery (a search stopped by its time limit: the lowest over every
candidate's latest finished round). Its recipe is run once more through
`run_recipe` into its own run folder, which reuses every finished stage and
redoes any that a later round overwrote, so the folder copied to DIR/model is
exactly what the recipe makes. The budget is then checked on DIR/model itself
(its parameters, non-zeros and weight files, or its latency measured against
the input); a candidate that fails the check is not returned, the next best is.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmopt.auto.evaluate import Context, run_candidate


class SearchFailed(RuntimeError):
    """No candidate met the budget (or none finished before the time limit)."""


def ranked(outcomes: list[list[dict[str, Any]]], complete: bool) -> list[dict[str, Any]]:
    """Feasible outcomes that may win, best first (lowest held-out perplexity, then KL).

    A complete search ranks its finalists; an incomplete one each candidate's latest
    finished round (what its run folder holds).
    """
    if complete:
        pool = list(outcomes[-1])
    else:
        latest: dict[str, dict[str, Any]] = {}
        for round_outcomes in outcomes:
            for outcome in round_outcomes:
                latest[outcome["candidate"]] = outcome
        pool = list(latest.values())
    pool = [o for o in pool if o["feasible"]]
    return sorted(pool, key=lambda o: (o["perplexity"], o["kl"], o["candidate"]))


def deliver(
    ctx: Context, outcomes: list[list[dict[str, Any]]], complete: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the best candidate that meets the budget on its output to DIR/model and its
    recipe to DIR/recipe.yaml; returns its outcome and the verification.

    Raises:
        SearchFailed: no candidate met the budget.
    """
    from llmopt.outputs import staged_output

    order = ranked(outcomes, complete)
    if not order:
        screened = sum(len(r) for r in outcomes)
        raise SearchFailed(
            f"none of the {screened} candidates measured met --budget {ctx.budget}"
            + ("" if complete else " before the time limit")
        )
    for outcome in order:
        last = run_candidate(ctx, Path(outcome["recipe"]), outcome["candidate"])
        with staged_output(ctx.folder / "model", overwrite=True) as tmp:
            shutil.copytree(last.output, tmp, dirs_exist_ok=True)
        verified = verify(ctx, ctx.folder / "model")
        if verified["meets"]:
            shutil.copyfile(outcome["recipe"], ctx.folder / "recipe.yaml")
            return outcome, verified
        ctx.say(
            f"{outcome['candidate']}: {ctx.budget.kind} {verified['cost']:.3f} measured on the "
            f"output exceeds the budget; trying the next best"
        )
    shutil.rmtree(ctx.folder / "model", ignore_errors=True)
    raise SearchFailed(f"no candidate met --budget {ctx.budget} when measured on its output")


def verify(ctx: Context, folder: Path) -> dict[str, Any]:
    """The budget's cost measured on the checkpoint in `folder` itself."""
    from llmopt.auto.evaluate import measured_latency
    from llmopt.evaluate.footprint import checkpoint_bytes, model_footprint
    from llmopt.pipeline.formats import load_checkpoint

    measured: dict[str, Any] = {
        **model_footprint(load_checkpoint(folder)).as_dict(),
        **checkpoint_bytes(folder),
    }
    if ctx.budget.kind == "latency":
        cost = measured_latency(ctx, folder)
    else:
        cost = ctx.budget.ratio(measured, ctx.original)
    return {
        "budget": str(ctx.budget),
        "cost": cost,
        "meets": ctx.budget.meets(cost),
        "measured": measured,
    }
