"""`--params P`: score every candidate shape by its KL to the original, keep the lowest.

Each candidate is turned into the plan the importance scores give it (the
same plan the surgery would carry out) and run as a mask on the original
model, so the KL measured is the slimmed model's, and no candidate model is
built. Lower KL at (at most) the same size means the candidate keeps more of
what the original predicts, which is what a short distillation starts from.
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


@dataclass(frozen=True)
class Choice:
    """The chosen shape, every candidate with its size and KL, and why the winner won."""

    winner: Shape
    candidates: list[dict[str, Any]]
    why: str


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

    Args:
        model: the original model (not changed).
        shapes: the candidates (at least one).
        importance: scores of every axis some candidate cuts.
        counter: the parameter counter of the model's config.
        batches: the probe token batches.
        device: where the forwards run (default: where the model is).
        progress: called as progress(done, total) per batch.
    """
    original = counter.original
    plans = [plan_for(original, shape, importance) for shape in shapes]
    kls = mean_kl(model, plans, batches, device, progress)
    tokens = sum(b.numel() for b in batches)
    rows = [
        {
            "label": shape.label(original),
            "shape": shape.as_dict(),
            "params": counter.count(shape),
            "params_kept": round(counter.count(shape) / counter.total, 4),
            "kl": float(f"{kl:.6g}"),
        }
        for shape, kl in zip(shapes, kls, strict=True)
    ]
    order = sorted(range(len(rows)), key=lambda i: kls[i])
    best = rows[order[0]]
    why = (
        f"lowest KL to the original, {best['kl']:.4f} nats/token on {tokens} calibration tokens, "
        f"among {len(rows)} candidates of at most the target size"
    )
    if len(order) > 1:
        second = rows[order[1]]
        why += f"; runner-up {second['label']} at {second['kl']:.4f}"
    return Choice(shapes[order[0]], rows, why)
