"""`reconstruct_model`: walk the student block by block, fitting each to its teacher block.

The student is walked by the sequential engine (`run_sequential`): block j
gets the student's own outputs of block j-1, already reconstructed, so the
errors left upstream are seen and compensated downstream. Its target is the
teacher's output of block `targets[j]` on the teacher's own inputs
(`TeacherStates`). After a block is fitted, the engine runs it again to feed
the next one, and those outputs give the block's loss after fitting for free
(the loss before is measured the same way, through the engine's own forward).

Shared layers: a parameter that several layers use is fitted at every layer
that uses it. So that the later fit does not undo the earlier one, each
batch of an earlier layer that shares a parameter with a later one is kept
(its inputs and targets) and replayed, mixed in with the later layer's own
batches. Held memory: two hidden states per calibration token per replayed
layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmopt.calibrate.data import Calibration
from llmopt.calibrate.data import progress_printer as _progress
from llmopt.calibrate.engine import BlockStep, run_sequential
from llmopt.models.arch import ArchAdapter
from llmopt.reconstruct.block import Batch, block_loss, train_block, trainable
from llmopt.reconstruct.teacher import TeacherStates


@dataclass(frozen=True)
class BlockFit:
    """How each block is fitted (the stage's config, without the data and the teacher)."""

    steps: int
    lr: float
    loss: str = "mse"
    max_grad_norm: float = 1.0
    seed: int = 0


def shared_partners(model: nn.Module) -> dict[int, list[int]]:
    """For each layer, the earlier layers whose blocks share a parameter with it."""
    blocks = ArchAdapter(model).blocks()
    owners: dict[int, list[int]] = {}
    partners: dict[int, list[int]] = {}
    for layer, block in enumerate(blocks):
        earlier: set[int] = set()
        for param in block.parameters():
            earlier.update(owners.setdefault(id(param), []))
            owners[id(param)].append(layer)
        partners[layer] = sorted(earlier)
    return partners


def _interleave(own: list[Batch], replay: list[list[Batch]]) -> list[Batch]:
    # Replayed layers' batches go between the block's own so an epoch sees them evenly.
    out: list[Batch] = []
    for i, batch in enumerate(own):
        out.append(batch)
        out.extend(r[i] for r in replay if i < len(r))
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def reconstruct_model(
    student: nn.Module,
    teacher: nn.Module,
    calibration: Calibration,
    targets: list[int],
    fit: BlockFit,
) -> dict[str, Any]:
    """Fit every block of `student` to the output of teacher block `targets[j]`; in place.

    Args:
        student: the compressed model (pruned, shared or slimmed), same hidden width.
        teacher: the model it came from.
        calibration: the token blocks, batch size, device and compute dtype.
        targets: the teacher block of every student block (see `llmopt.reconstruct.layers`).
        fit: steps, learning rate, loss and seed of each block's fit.

    Returns:
        JSON-able facts: per block its target, loss before and after, the first
        and last training losses, seconds; totals.
    """
    device = calibration.device or next(student.parameters()).device
    dtype = calibration.compute_dtype
    student.eval()  # dropout off: the targets are deterministic
    teacher.eval()
    states = TeacherStates(teacher, calibration.ids, calibration.batch_size, device, dtype)
    partners = shared_partners(student)
    replayed = {i for layers in partners.values() for i in layers}
    kept: dict[int, list[Batch]] = {}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def handle(step: BlockStep) -> None:
        t0 = time.perf_counter()
        teacher_out = states.output(targets[step.index])
        own = [
            Batch(hidden, args, kwargs, target)
            for (hidden, args, kwargs), target in zip(
                step.inputs.batches(), teacher_out, strict=True
            )
        ]
        batches = _interleave(own, [kept[i] for i in partners[step.index]])
        before = _loss(step.outputs(), own, fit.loss)
        curve = train_block(
            step.block,
            batches,
            kind=fit.loss,
            steps=fit.steps,
            lr=fit.lr,
            max_grad_norm=fit.max_grad_norm,
            seed=fit.seed + step.index,
            autocast=dtype,
        )
        step.weights_changed = True
        after = _loss(step.outputs(), own, fit.loss)  # the engine feeds these outputs on
        if step.index in replayed:
            kept[step.index] = own
        rows.append(
            {
                "block": step.index,
                "target": targets[step.index],
                "loss_before": before,
                "loss_after": after,
                "train_loss_first": curve[0] if curve else None,
                "train_loss_last": curve[-1] if curve else None,
                "replayed_layers": partners[step.index],
                "parameters": sum(p.numel() for p in trainable(step.block)),
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )

    run_sequential(
        student,
        calibration.ids,
        handle,
        batch_size=calibration.batch_size,
        device=device,
        progress=_progress("reconstruct", calibration.progress),
        compute_dtype=dtype,
    )
    samples, seq_len = calibration.ids.shape
    return {
        "blocks": rows,
        "mean_loss_before": _mean([r["loss_before"] for r in rows]),
        "mean_loss_after": _mean([r["loss_after"] for r in rows]),
        "calibration": {"samples": int(samples), "seq_len": int(seq_len)},
        "tokens": int(samples * seq_len),
        "optimizer_steps": fit.steps * len(rows),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _loss(outputs: list[torch.Tensor], batches: list[Batch], kind: str) -> float:
    """The token-weighted mean loss of the block's `outputs` against the batches' targets."""
    total, tokens = 0.0, 0
    for out, batch in zip(outputs, batches, strict=True):
        n = batch.target[..., 0].numel()
        total += float(block_loss(kind, out, batch.target)) * n
        tokens += n
    return total / max(tokens, 1)
