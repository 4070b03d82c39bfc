"""Latency: measured side by side with the input on this machine, and a model fitted to
those measurements that aims new candidates.

Decode latency (batch 1, one token at a time with the KV cache) is what a
user waits for. On a shared machine a single timing drifts, so the input and
the candidate alternate in every repeat (ABBA order) and the ratio is of
medians. To aim a candidate before it exists, the ratio is modelled as

    ratio = w * (layers kept / layers) + (1 - w) * (parameters kept / parameters)

(per-layer overheads scale with depth, the matrix products with the
parameters); `w` starts at 1/2 and is refitted by least squares to every
measured candidate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from llmopt.slim.shape import Shape


@dataclass(frozen=True)
class LatencyModel:
    """Predicted decode latency of a shape, as a fraction of the input's."""

    weight: float = 0.5
    """w: how much of the latency scales with depth rather than with parameters."""

    def predict(self, shape: Shape, sizer) -> float:
        """The predicted ratio of a model of `shape` (`sizer`: the input's `Sizer`)."""
        layers = shape.layers / sizer.original_shape.layers
        params = sizer.params(shape) / sizer.counter.total
        return self.weight * layers + (1 - self.weight) * params

    @staticmethod
    def fit(points: list[tuple[float, float, float]]) -> LatencyModel:
        """The model that fits (layer ratio, parameter ratio, measured ratio) points best
        (least squares for w, clipped to [0, 1]; the prior where they cannot tell)."""
        num = sum((depth - p) * (r - p) for depth, p, r in points)
        den = sum((depth - p) ** 2 for depth, p, _ in points)
        if den < 1e-6:
            return LatencyModel()
        return LatencyModel(min(1.0, max(0.0, num / den)))


@torch.no_grad()
def _decode_seconds(model, prompt: torch.Tensor, steps: int) -> float:
    from llmopt.models.compat import cache_kwargs, output_cache

    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, **cache_kwargs(model, output_cache(out)))
        token = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / steps


def latency_ratio(
    original, candidate, repeats: int = 9, prompt_tokens: int = 32, decode_tokens: int = 32
) -> float:
    """Median decode seconds per token of `candidate` over `original`'s, measured in
    alternating order on the same random prompt (both models in eval mode, same device)."""
    gen = torch.Generator().manual_seed(0)
    device = next(original.parameters()).device
    prompt = torch.randint(0, original.config.vocab_size, (1, prompt_tokens), generator=gen)
    prompt = prompt.to(device)
    for model in (original, candidate):  # warm-up: allocator, lazy inits
        model.eval()
        _decode_seconds(model, prompt, 2)
    times: dict[int, list[float]] = {0: [], 1: []}
    pair = [(0, original), (1, candidate)]
    for r in range(repeats):
        for index, model in pair if r % 2 == 0 else pair[::-1]:
            times[index].append(_decode_seconds(model, prompt, decode_tokens))
    return statistics.median(times[1]) / statistics.median(times[0])
