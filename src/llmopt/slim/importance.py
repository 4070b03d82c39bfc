"""Importance of MLP channels, attention heads and layers, from one walk of the calibration data.

The sequential engine feeds every block its calibration inputs once; hooks
on the block's output projections see what each channel and head writes:

- MLP channel c: mean over tokens of |a_c|, the activation entering the down
  projection (act(gate) * up, or act(fc1)): Minitron's activation score.
  `weighted` multiplies it by ||W_down[:, c]||, the size of what the channel
  writes, since a large activation through a tiny column changes nothing.
- attention head h: mean over tokens of ||W_o[:, h] x_h||, the norm of the
  head's contribution to the block output (x_h is its attention output).
- layer: Block Influence, mean over tokens of 1 - cos(block input, block output)
  (ShortGPT): a block that barely turns the residual stream does little.

Nothing is changed during the walk, so every block sees the original model's
inputs; all scores are "higher = more important".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmopt.calibrate import BlockStep, Calibration
from llmopt.models.arch import ArchAdapter, get_path, weight_out_in


@dataclass
class Importance:
    """Scores per original layer (higher = more important); None where not measured."""

    ffn: torch.Tensor | None = None
    """(layers, ffn channels)."""
    heads: torch.Tensor | None = None
    """(layers, query heads)."""
    layers: torch.Tensor | None = None
    """(layers,)."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Axis -> the metric its scores come from."""


def channel_abs_sum(a: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of |a_c| for activations shaped (..., channels)."""
    return a.reshape(-1, a.shape[-1]).float().abs().sum(0)


def head_output_norm_sum(x: torch.Tensor, w_out: torch.Tensor, heads: int) -> torch.Tensor:
    """Sum over tokens of ||W_out[:, h] x_h||_2 for each head h.

    Args:
        x: attention outputs entering the output projection, (..., heads * head_dim).
        w_out: the output projection, (hidden, heads * head_dim).
        heads: number of heads.
    """
    x = x.reshape(-1, heads, x.shape[-1] // heads).float()
    w = w_out.float().reshape(w_out.shape[0], heads, -1)
    # ||W_h x_h||^2 = x_h^T (W_h^T W_h) x_h: a (head_dim x head_dim) Gram matrix per
    # head instead of a (tokens x heads x hidden) product.
    gram = torch.einsum("ohd,ohe->hde", w, w)
    squared = (torch.einsum("thd,hde->the", x, gram) * x).sum(-1)
    return squared.clamp_min(0).sqrt().sum(0)


def influence_sum(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of 1 - cos(input, output) of a block, as a 0-d float tensor."""
    a = inputs.reshape(-1, inputs.shape[-1]).float()
    b = outputs.reshape(-1, outputs.shape[-1]).float()
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).sum()


@dataclass
class _Sums:
    channels: list[torch.Tensor] = field(default_factory=list)
    heads: list[torch.Tensor] = field(default_factory=list)
    influence: list[torch.Tensor] = field(default_factory=list)


def block_scores(
    model: torch.nn.Module,
    calib: Calibration,
    ffn: str | None = None,
    heads: str | None = None,
    layers: str | None = None,
) -> Importance:
    """Score the axes asked for in one walk of the calibration blocks.

    Args:
        model: the model to score (not changed).
        calib: the calibration blocks and how to run them.
        ffn: 'activation' or 'weighted' to score MLP channels; None: not.
        heads: 'output' to score attention heads; None: not.
        layers: 'influence' to score layers; None: not.
    """
    adapter = ArchAdapter(model)
    spec = adapter.spec
    n_heads = adapter.num_heads
    sums = _Sums()

    def handle(step: BlockStep) -> None:
        block = step.block
        down = get_path(block, spec.mlp_out[0])
        o_proj = get_path(block, spec.attn_out[0])
        acc: dict[str, torch.Tensor] = {}
        hooks = []

        def on_down(_m, args):
            acc["ffn"] = acc.get("ffn", 0) + channel_abs_sum(args[0])

        def on_o(_m, args):
            w = weight_out_in(o_proj)
            acc["heads"] = acc.get("heads", 0) + head_output_norm_sum(args[0], w, n_heads)

        if ffn is not None:
            hooks.append(down.register_forward_pre_hook(on_down))
        if heads is not None:
            hooks.append(o_proj.register_forward_pre_hook(on_o))
        try:
            step.feed()
        finally:
            for hook in hooks:
                hook.remove()
        step.weights_changed = False  # measured only: the engine reuses these outputs
        tokens = sum(h[..., 0].numel() for h in step.inputs.hidden)
        if ffn is not None:
            scores = acc["ffn"] / tokens
            if ffn == "weighted":
                scores = scores * weight_out_in(down).float().norm(dim=0)
            sums.channels.append(scores.cpu())
        if heads is not None:
            sums.heads.append((acc["heads"] / tokens).cpu())
        if layers is not None:
            pairs = zip(step.inputs.hidden, step.outputs(), strict=True)
            total = sum(influence_sum(i, o) for i, o in pairs)
            sums.influence.append((total / tokens).cpu())

    calib.run(model, handle, "slim: scoring")
    out = Importance()
    if ffn is not None:
        out.ffn, out.metrics["ffn"] = torch.stack(sums.channels), ffn
    if heads is not None:
        out.heads, out.metrics["heads"] = torch.stack(sums.heads), heads
    if layers is not None:
        out.layers, out.metrics["layers"] = torch.stack(sums.influence), layers
    return out
