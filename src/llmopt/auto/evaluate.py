"""One candidate in one round: run its recipe, measure its cost and its proxy.

The recipe runs through `run_recipe` into the candidate's own run folder
(DIR/candidates/ID), so a later round reuses every stage an earlier round
finished with the same settings and reruns only the recovery and what follows
it. The cost is read from the last stage's record (parameters, non-zeros and
bytes measured on the written checkpoint) or, for latency, measured side by
side with the input; the proxy is the KL to the input on held-out tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from llmopt.auto import clock
from llmopt.auto.budget import Budget
from llmopt.auto.candidate import Candidate
from llmopt.auto.config import AutoConfig
from llmopt.auto.proxy import Reference
from llmopt.auto.recipes import RecipeSettings, candidate_recipe
from llmopt.auto.rounds import Round
from llmopt.outputs import write_text_atomic

EVENTS = "events.jsonl"
KEPT_METRICS = (
    "unique_params",
    "nonzero_params",
    "weight_bytes",
    "perplexity",
    "nll",
    "eval_tokens",
    "total_params",
)


class CandidateFailed(RuntimeError):
    """A stage refused or failed this candidate (its recipe does not suit this model, or its
    training diverged); the search goes on without it."""


@dataclass
class Context:
    """What every evaluation of one search shares."""

    folder: Path
    budget: Budget
    config: AutoConfig
    settings: RecipeSettings
    original: dict[str, Any]
    """The input's measurement (the same settings as every stage's)."""
    reference: Reference
    model: Any
    """The input model (float32), for side-by-side latency."""
    say: Callable[[str], None]

    @property
    def proxy_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.proxy_dtype == "bfloat16" else torch.float32

    def log(self, event: str, **facts: Any) -> None:
        """Append one line to DIR/events.jsonl (what ran, in which process, when): 'start'
        when a candidate's round begins, 'done' once its outcome is stored."""
        line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **facts})
        with open(self.folder / EVENTS, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def write_recipe(ctx: Context, candidate: Candidate, round_: Round) -> Path:
    """Write the candidate's recipe for this round (DIR/recipes/ID-rN.yaml); returns its path."""
    steps = ctx.settings.steps(round_.recovery_tokens)
    recipe = candidate_recipe(candidate, ctx.settings, steps)
    path = ctx.folder / "recipes" / f"{candidate.id}-r{round_.index}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_candidate(ctx: Context, recipe: Path, candidate_id: str):
    """Run (or reuse) a candidate's recipe in its run folder; returns the last `StageRun`."""
    from llmopt.pipeline.run import run_recipe

    result = run_recipe(
        recipe,
        ctx.folder / "candidates" / candidate_id,
        report=False,
        say=lambda _line: None,
        input_measurement=(ctx.settings.measure, ctx.original),
    )
    return result.stages[-1]


def discard(ctx: Context, candidate_ids: Iterable[str]) -> None:
    """Remove the run folders of candidates that are out of the search, unless
    --keep-candidates; their recipes stay (DIR/recipes), and `run_candidate` rebuilds a
    removed folder if a candidate is ever needed again.

    The folder is renamed before it is removed, so an interrupted removal never leaves a
    run folder whose records claim outputs that are gone.
    """
    root = ctx.folder / "candidates"
    if ctx.config.keep_candidates or not root.is_dir():
        return
    # An interrupted removal's leftovers go first, so that no rename below meets one.
    for leftover in root.glob(".*.removed"):
        shutil.rmtree(leftover, ignore_errors=True)
    for cid in sorted(candidate_ids):
        if (root / cid).is_dir():
            trash = (root / cid).rename(root / f".{cid}.removed")
            shutil.rmtree(trash, ignore_errors=True)


def evaluate(ctx: Context, candidate: Candidate, round_: Round) -> dict[str, Any]:
    """Run `candidate` with the round's recovery and measure it; returns its outcome.

    Raises:
        CandidateFailed: a stage refused the candidate or failed (the reason in one line).
    """
    from llmopt.errors import BadInput
    from llmopt.pipeline.formats import load_checkpoint
    from llmopt.pipeline.runner import StageFailed

    start = clock.now()
    recipe = write_recipe(ctx, candidate, round_)
    ctx.log("start", candidate=candidate.id, round=round_.index)
    try:
        last = run_candidate(ctx, recipe, candidate.id)
    except (BadInput, StageFailed) as err:
        ctx.log("failed", candidate=candidate.id, round=round_.index, reason=str(err))
        raise CandidateFailed(f"{candidate.id} {candidate.label}: {err}") from err
    after = last.record["metrics"]["after"]
    model = load_checkpoint(last.output, dtype=ctx.proxy_dtype)
    kl = ctx.reference.kl(model, round_.proxy_tokens)
    outcome: dict[str, Any] = {
        "candidate": candidate.id,
        "label": candidate.label,
        "round": round_.index,
        "recovery_steps": ctx.settings.steps(round_.recovery_tokens),
        "recovery_tokens": ctx.settings.steps(round_.recovery_tokens)
        * ctx.settings.tokens_per_step,
        "proxy_tokens": ctx.reference.windows(round_.proxy_tokens) * ctx.reference.seq_len,
        "kl": kl,
        "perplexity": after["perplexity"],
        "metrics": {key: after[key] for key in KEPT_METRICS if key in after},
        "layers": int(model.config.num_hidden_layers),
        "output": str(last.output),
        "recipe": str(recipe),
    }
    del model
    if ctx.budget.kind == "latency":
        outcome["cost"] = measured_latency(ctx, last.output)
    else:
        outcome["cost"] = ctx.budget.ratio(after, ctx.original)
    outcome["feasible"] = ctx.budget.meets(outcome["cost"])
    outcome["wall_s"] = round(clock.now() - start, 1)
    return outcome


def measured_latency(ctx: Context, folder: Path) -> float:
    """Decode latency of the checkpoint in `folder` as a fraction of the input's."""
    from llmopt.auto.latency import latency_ratio
    from llmopt.pipeline.formats import load_checkpoint

    device = next(ctx.model.parameters()).device
    model = load_checkpoint(folder, device=device)
    return latency_ratio(ctx.model, model)
