"""AdamW with decay only on matrices, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters AdamW must not decay: biases, norm weights and embedding tables.

    Decaying them pulls norms towards zero gain and shrinks rare tokens'
    embeddings for no regularisation benefit. Found by module type rather
    than by name, so every family is covered.
    """
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        is_norm = "norm" in type(module).__name__.lower()
        is_embedding = isinstance(module, nn.Embedding)
        for p_name, param in module.named_parameters(recurse=False):
            if is_norm or is_embedding or param.ndim < 2:
                names.add(prefix + p_name)
    return names


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    extra: list[nn.Parameter] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (+ `extra`), in two decay groups.

    Fused (one kernel over all tensors, no temporaries) wherever torch has the
    kernel for the parameters' device, CPU included: on a 2-core CPU the fused
    step of smollm2-135m takes several times less than the per-tensor loop that
    torch picks by default there. Sharded (DTensor) parameters keep foreach.
    """
    skip = no_decay_names(model)
    decay, plain = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        # Tied weights (embedding == head) appear once; a second group entry would double-step.
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (plain if name in skip else decay).append(param)
    for param in extra or []:
        if id(param) not in seen:
            (decay if param.ndim >= 2 else plain).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    params = decay + plain
    fused = bool(params) and all(_fusable(p) for p in params)
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True
    )


def _fusable(param: torch.Tensor) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    plain = type(param) in (torch.Tensor, nn.Parameter)  # not a DTensor (FSDP)
    return plain and param.device.type in _get_fused_kernels_supported_devices()


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine down to `min_ratio`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor`; step it once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, min_ratio)
    )
