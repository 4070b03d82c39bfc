"""Perplexity: exp of the token-weighted mean negative log-likelihood.

Non-overlapping windows (the default) score every token after the first of
each window once. With `stride < seq_len`, windows of `seq_len` tokens start
every `stride` tokens and only the tokens not scored by an earlier window
count, so each token is predicted with at least `seq_len - stride` tokens of
context (the sliding-window evaluation of the transformers docs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmopt.errors import BadInput


@dataclass(frozen=True)
class Perplexity:
    """The result: perplexity, mean NLL in nats, and how many tokens were scored."""

    perplexity: float
    nll: float
    tokens: int


def windows(n_tokens: int, seq_len: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) for each window; targets in [first_scored, end) are scored.

    Position `first_scored` is the first *target* index (>= start + 1).
    """
    stride = stride or seq_len
    if not 1 <= stride <= seq_len:
        raise BadInput(f"stride={stride}: must be in [1, seq_len={seq_len}]")
    out = []
    scored_until = 1  # token 0 has no context and is never a target
    start = 0
    while scored_until < n_tokens:
        end = min(start + seq_len, n_tokens)
        first = max(scored_until, start + 1)
        if first < end:  # a one-token tail window has no target: skip its forward pass
            out.append((start, end, first))
        scored_until = end
        if end == n_tokens:
            break
        start += stride
    return out


@torch.no_grad()
def evaluate_perplexity(
    model,
    ids: torch.Tensor,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool = True,
) -> Perplexity:
    """Perplexity of `model` on a flat token stream.

    Args:
        model: a causal LM (called with `input_ids`, returning `.logits`).
        ids: 1-D token stream.
        seq_len: window length in tokens.
        stride: sliding-window step; None for non-overlapping windows.
        batch_size: windows per forward pass (windows of equal length only).
        max_tokens: evaluate only the first this many tokens.

    Raises:
        BadInput: seq_len exceeds the model's positions, or there is too little text.
    """
    from llmopt.models.arch import ArchAdapter

    limit = ArchAdapter(model).max_positions
    if seq_len > limit:
        raise BadInput(f"--seq-len {seq_len}: the model has only {limit} positions")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise BadInput(f"evaluation needs at least 2 tokens; got {ids.numel()}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    spans = windows(ids.numel(), seq_len, stride)
    total_nll, total_tokens = 0.0, 0
    bar = tqdm(total=len(spans), desc="perplexity", unit="win", disable=not progress, leave=False)
    i = 0
    while i < len(spans):
        # Batch consecutive windows of the same length (all but possibly the last).
        length = spans[i][1] - spans[i][0]
        group = [spans[i]]
        while (
            len(group) < batch_size
            and i + len(group) < len(spans)
            and spans[i + len(group)][1] - spans[i + len(group)][0] == length
        ):
            group.append(spans[i + len(group)])
        batch = torch.stack([ids[s:e] for s, e, _ in group]).to(device)
        logits = model(input_ids=batch).logits.float()
        # logits[:, t] predicts token t + 1.
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
        ).view(len(group), -1)
        for row, (s, _, first) in enumerate(group):
            scored = nll[row, first - s - 1 :]
            total_nll += float(scored.double().sum())
            total_tokens += scored.numel()
        i += len(group)
        bar.update(len(group))
    bar.close()
    model.train(was_training)
    mean = total_nll / total_tokens
    return Perplexity(perplexity=math.exp(mean), nll=mean, tokens=total_tokens)
