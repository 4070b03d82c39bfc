"""The LM head and its cross-entropy in one pass, without B x T x V fp32 temporaries.

Why: with a large vocabulary (49,152 for smollm2) the logits of a micro-batch
are the largest tensors of a training step. The plain path makes the logits
in the head's dtype, an fp32 copy, a log-softmax of that copy, and in
backward the gradients of both: four or five full-size passes and buffers.
Here the head matmul writes the logits into one buffer, each chunk of rows is
turned in place into its gradient (softmax minus one-hot, in fp32), and the
two gradient matmuls run right away, so backward only scales them. The
matmuls are exactly those of the plain path, in the same dtypes (autocast's
compute dtype when it is on), so the result equals the plain path up to
float summation order.

How the head's input is obtained: a forward pre-hook on the head records its
input and hands the head an empty slice instead, so the model's own forward
(and any DDP/FSDP wrapper around it) runs unchanged while the full logits are
never computed. Families whose logits are more than `head(hidden)` (soft-capped
or scaled logits) must not use this path; every family `ArchAdapter` knows
computes plain `head(hidden)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmopt.train.objective import IGNORE_INDEX

CHUNK_ELEMENTS = 2**20
"""fp32 elements transformed per chunk (4 MiB): small enough to stay in cache and
below the allocator's mmap threshold, large enough that Python overhead is negligible."""
GPU_CHUNK_ELEMENTS = 2**26
"""On a GPU the cost is kernel launches, not cache: 64M elements (256 MiB of fp32) per
chunk. With the CPU's chunks a smollm2 step (8 x 1024 tokens) launched ~400 chunks of
a dozen kernels each and trained at half the HF Trainer's speed on an H200."""


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@dataclass
class HeadInput:
    """What the head received in the last forward: its input and the head module."""

    hidden: torch.Tensor | None = None
    head: nn.Module | None = None


def find_head(model: nn.Module) -> nn.Module | None:
    """The model's output projection when the fused path can replace it, else None.

    None for a compiled model (a hook added per call would recompile it), a
    family `ArchAdapter` does not know, or a head that is not a plain linear.
    """
    from llmopt.errors import BadInput
    from llmopt.models.arch import ArchAdapter

    if hasattr(model, "_orig_mod"):
        return None
    try:
        head = ArchAdapter(unwrap(model)).head()
    except (AttributeError, KeyError, ValueError, BadInput):
        return None
    return head if isinstance(head, nn.Linear) else None


@contextlib.contextmanager
def capture_head_input(head: nn.Module) -> Iterator[HeadInput]:
    """Inside: the head records its input and computes logits for no position.

    The model's output then holds logits of shape [B, 0, V]; compute the loss
    from the recorded input with `linear_cross_entropy_sum`.
    """
    found = HeadInput()

    def grab(module: nn.Module, args: tuple) -> tuple:
        found.hidden, found.head = args[0], module
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(grab)
    try:
        yield found
    finally:
        handle.remove()


def _compute_dtype(device_type: str, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_rows(vocab: int, device: torch.device) -> int:
    elements = CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS
    return max(1, elements // max(1, vocab))


def logits_to_grad_(logits: torch.Tensor, targets: torch.Tensor, want_grad: bool) -> torch.Tensor:
    """Cross-entropy SUM of `logits` [N, V] against `targets` [N] (-100 ignored), fp32.

    With `want_grad`, `logits` is overwritten by d(sum)/d(logits): softmax minus
    one-hot on scored rows, zero on ignored ones (computed in fp32 chunk by
    chunk, stored in the buffer's dtype). Without it, the buffer is left
    changed (exponentiated chunks): callers pass a buffer they own.
    """
    total = logits.new_zeros((), dtype=torch.float32)
    step = _chunk_rows(logits.shape[-1], logits.device)
    # One fp32 chunk for all of them: a fresh chunk-sized buffer per chunk costs a page
    # fault per 4 KiB on a CPU, about as much as the chunk's arithmetic.
    scratch = (
        None
        if logits.dtype == torch.float32
        else logits.new_empty((min(step, logits.shape[0]), logits.shape[1]), dtype=torch.float32)
    )
    for a in range(0, logits.shape[0], step):
        part = logits[a : a + step]
        x = part if scratch is None else scratch[: part.shape[0]].copy_(part)
        t = targets[a : a + step]
        valid = t != IGNORE_INDEX
        safe = t.clamp_min(0).unsqueeze(1)
        picked = x.gather(1, safe).squeeze(1)
        peak = x.amax(dim=1, keepdim=True)
        x.sub_(peak).exp_()  # in place: no chunk-sized temporary
        norm = x.sum(dim=1, keepdim=True)
        lse = (peak + norm.log()).squeeze(1)
        total += torch.where(valid, lse - picked, 0.0).sum()
        if want_grad:
            x.div_(norm)  # softmax
            x.scatter_add_(1, safe, -valid.to(x.dtype).unsqueeze(1))
            x.mul_(valid.unsqueeze(1))
            if x is not part:
                part.copy_(x)
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss and the gradients of hidden, weight and bias in forward; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(hidden.device.type, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            # The one full-size buffer: logits, then (in place) their gradient.
            logits = F.linear(h, w, None if bias is None else bias.to(dtype))
            loss = logits_to_grad_(logits, targets, want_h or want_w or want_b)
            grad_h = (logits @ w).to(hidden.dtype) if want_h else None
            grad_w = (logits.T @ h).to(weight.dtype) if want_w else None
            grad_b = logits.sum(0, dtype=torch.float32).to(bias.dtype) if want_b else None
        del logits
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors

        # In place: the saved gradients serve this one backward (the graph is not
        # retained), and a fresh [V, d] buffer would cost its page faults every step.
        def scaled(g):
            return None if g is None else g.mul_(grad_loss.to(g.dtype))

        return scaled(grad_h), scaled(grad_w), scaled(grad_b), None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy SUM of `head(hidden)` against unshifted `labels`.

    Args:
        hidden: [B, T, d] the head's input (see `capture_head_input`).
        head: the output projection (weight [V, d], optional bias).
        labels: [B, T] unshifted labels, -100 where ignored (position t predicts
            labels[:, t + 1], as `llmopt.train.objective` says).

    Returns:
        fp32 scalar, differentiable w.r.t. hidden and the head's parameters.
    """
    # Pad the targets rather than slice the hidden states: the rows stay a free view.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1).to(hidden.device)
    flat = hidden.reshape(-1, hidden.shape[-1])
    params = [t for t in (flat, head.weight, head.bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in params):
        return _LinearCrossEntropy.apply(flat, head.weight, head.bias, targets)
    dtype = _compute_dtype(flat.device.type, head.weight)
    with torch.autocast(flat.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.to(dtype)
        logits = F.linear(flat.to(dtype), head.weight.to(dtype), bias)
        return logits_to_grad_(logits, targets, want_grad=False)
