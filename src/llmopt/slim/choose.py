"""`--params P`: score every candidate shape by its KL to the original, keep the lowest.

Each candidate is turned into the plan the importance scores give it (the
same plan the surgery would carry out) and run as a mask on the original
model, so the KL measured is the slimmed model's, and no candidate model is
built. Lower KL at (at most) the same size means the candidate keeps more of
what the original predicts, which is what a short distillation starts from.
The cost is one forward pass per candidate and token, so candidates are
screened on a quarter of the tokens first and only the best few go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmopt.slim.importance import Importance
from llmopt.slim.plan import plan_for
from llmopt.slim.probes import mean_kl
from llmopt.slim.shape import ParamCounter, Shape

FINALISTS = 3
"""Candidates measured on every probe token (the rest only on the first quarter): the
candidates' KLs differ by far more than the noise of a quarter, and each candidate
costs a full forward pass per token."""


@dataclass(frozen=True)
class Choice:
    """The chosen shape, every candidate with its size and KL, and why the winner won."""

    winner: Shape
    candidates: list[dict[str, Any]]
    why: str


def _row(shape: Shape, counter: ParamCounter) -> dict[str, Any]:
    return {
        "label": shape.label(counter.original),
        "shape": shape.as_dict(),
        "params": counter.count(shape),
        "params_kept": round(counter.count(shape) / counter.total, 4),
    }


def choose_shape(
    model: nn.Module,
    shapes: Sequence[Shape],
    importance: Importance,
    counter: ParamCounter,
    batches: Sequence[torch.Tensor],
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Choice:
    """Pick the candidate with the lowest mean KL(original || candidate) per token.

    Every candidate is screened on the first quarter of the batches; the
    `FINALISTS` best are measured on the rest too, and the winner is the
    finalist with the lowest KL over all of them.

    Args:
        model: the original model (not changed).
        shapes: the candidates (at least one).
        importance: scores of every axis some candidate cuts.
        counter: the parameter counter of the model's config.
        batches: the probe token batches.
        device: where the forwards run (default: where the model is).
        progress: called as progress(done, total) per batch.
    """
    plans = [plan_for(counter.original, shape, importance) for shape in shapes]
    screen = max(1, len(batches) // 4) if len(shapes) > FINALISTS else len(batches)
    screened = mean_kl(model, plans, batches[:screen], device, progress)
    finalists = sorted(range(len(shapes)), key=lambda i: screened[i])[:FINALISTS]
    rest, first_tokens = batches[screen:], sum(b.numel() for b in batches[:screen])
    final = {i: screened[i] for i in finalists}
    if rest:
        later = mean_kl(model, [plans[i] for i in finalists], rest, device, progress)
        rest_tokens = sum(b.numel() for b in rest)
        for i, kl in zip(finalists, later, strict=True):
            final[i] = (screened[i] * first_tokens + kl * rest_tokens) / (
                first_tokens + rest_tokens
            )
    rows = []
    for i, shape in enumerate(shapes):
        row = _row(shape, counter)
        row["kl_screen"] = float(f"{screened[i]:.6g}")
        row["kl"] = float(f"{final[i]:.6g}") if i in final else None
        rows.append(row)
    order = sorted(final, key=final.__getitem__)
    tokens = sum(b.numel() for b in batches)
    best = rows[order[0]]
    why = (
        f"lowest KL to the original, {best['kl']:.4f} nats/token on {tokens} calibration tokens, "
        f"of the {len(order)} best of {len(rows)} candidates (screened on {first_tokens} tokens), "
        "all of at most the target size"
    )
    if len(order) > 1:
        second = rows[order[1]]
        why += f"; runner-up {second['label']} at {second['kl']:.4f}"
    return Choice(shapes[order[0]], rows, why)
