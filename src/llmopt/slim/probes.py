"""Full-model measurements on a few thousand calibration tokens.

The block walk (`importance.py`) scores what each part writes; these scores
instead look at the language-model loss, which costs full forward (and for
Taylor, backward) passes, so they use `score_tokens` tokens only:

- `mean_kl`: KL(original || candidate) per token for several plans, each run
  as a mask on the one model (`masking.masked`); the original's log-probs of
  a batch are computed once and compared with every candidate's.
- `skip_losses`: increase of the mean token loss when each layer is skipped.
- `taylor_scores`: first-order Taylor estimate of the loss change when an MLP
  channel or a head is removed: |sum over a sequence's tokens of a * dL/da|,
  summed over sequences (a: the channel's activation, or the head's attention
  output, where it enters the output projection). Signed terms of one
  sequence cancel as the loss change would; the absolute value per sequence
  keeps sequences from cancelling each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from llmopt.models.arch import ArchAdapter, get_path
from llmopt.slim.masking import masked
from llmopt.slim.plan import SlimPlan, full_plan
from llmopt.slim.shape import Shape


def probe_batches(ids: torch.Tensor, tokens: int) -> list[torch.Tensor]:
    """The first blocks of `ids` (samples, seq_len) holding at least `tokens` tokens, one per batch.

    One sequence per forward: the logits of a large vocabulary dominate memory.
    """
    count = min(ids.shape[0], math.ceil(tokens / ids.shape[1]))
    return list(ids[:count].split(1))


@contextmanager
def _on(model: nn.Module, device: torch.device | None) -> Iterator[torch.device]:
    home = next(model.parameters()).device
    if device is None or device == home:
        yield home
        return
    model.to(device)
    try:
        yield device
    finally:
        model.to(home)


def _log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return F.log_softmax(logits.float(), dim=-1).flatten(0, 1)


@torch.no_grad()
def mean_kl(
    model: nn.Module,
    plans: Sequence[SlimPlan],
    batches: Sequence[torch.Tensor],
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Mean over tokens of KL(original || plan) in nats, for each plan."""
    totals = [0.0] * len(plans)
    tokens = 0
    with _on(model, device) as where:
        for done, batch in enumerate(batches, 1):
            batch = batch.to(where)
            reference = _log_probs(model, batch)
            tokens += reference.shape[0]
            for i, plan in enumerate(plans):
                with masked(model, plan):
                    log_q = _log_probs(model, batch)
                kl = F.kl_div(log_q, reference, log_target=True, reduction="sum")
                totals[i] += float(kl)
            if progress is not None:
                progress(done, len(batches))
    return [t / tokens for t in totals]


def _mean_nll(model: nn.Module, batches: Sequence[torch.Tensor], where: torch.device) -> float:
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(where)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total, count = total + float(nll), count + batch[:, 1:].numel()
    return total / count


def drop_layer(original: Shape, layer: int) -> SlimPlan:
    """The plan that removes one layer and nothing else."""
    plan = full_plan(original)
    keep = [i for i in range(original.layers) if i != layer]
    return SlimPlan(original, tuple(keep), plan.channels[1:], plan.groups[1:], plan.heads[1:])


@torch.no_grad()
def skip_losses(
    model: nn.Module,
    original: Shape,
    batches: Sequence[torch.Tensor],
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(layers,) increase of the mean token loss (nats) when each layer alone is skipped."""
    out = torch.zeros(original.layers)
    with _on(model, device) as where:
        base = _mean_nll(model, batches, where)
        for layer in range(original.layers):
            with masked(model, drop_layer(original, layer)):
                out[layer] = _mean_nll(model, batches, where) - base
            if progress is not None:
                progress(layer + 1, original.layers)
    return out


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    # Gradients are wanted for activations only: no parameter gradient memory.
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def taylor_scores(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    ffn: bool,
    heads: bool,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """First-order Taylor scores: ((layers, ffn channels) or None, (layers, heads) or None)."""
    adapter = ArchAdapter(model)
    spec, n_heads = adapter.spec, adapter.num_heads
    blocks = adapter.blocks()
    ffn_sums = [0.0] * len(blocks)
    head_sums = [0.0] * len(blocks)

    def watch(index: int, sums: list, per_head: bool):
        def pre_hook(_module: nn.Module, args: tuple) -> None:
            a = args[0]

            def on_grad(g: torch.Tensor) -> None:
                # A batch is one sequence (some families flatten tokens before the MLP).
                prod = (a.detach().float() * g.float()).reshape(-1, a.shape[-1]).sum(0)
                if per_head:
                    prod = prod.reshape(n_heads, -1).sum(-1)
                sums[index] = sums[index] + prod.abs()

            a.register_hook(on_grad)

        return pre_hook

    hooks = []
    for index, block in enumerate(blocks):
        if ffn:
            down = get_path(block, spec.mlp_out[0])
            hooks.append(down.register_forward_pre_hook(watch(index, ffn_sums, False)))
        if heads:
            o_proj = get_path(block, spec.attn_out[0])
            hooks.append(o_proj.register_forward_pre_hook(watch(index, head_sums, True)))
    try:
        with _on(model, device) as where, _frozen(model), torch.enable_grad():
            for done, batch in enumerate(batches, 1):
                batch = batch.to(where)
                embeds = model.get_input_embeddings()(batch).detach().requires_grad_(True)
                loss = model(inputs_embeds=embeds, labels=batch, use_cache=False).loss
                loss.backward()
                if progress is not None:
                    progress(done, len(batches))
    finally:
        for hook in hooks:
            hook.remove()
    return (
        torch.stack([s.cpu() for s in ffn_sums]) if ffn else None,
        torch.stack([s.cpu() for s in head_sums]) if heads else None,
    )
