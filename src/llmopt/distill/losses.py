"""Distillation losses, as sums over label tokens, computed in chunks of tokens.

Every function here returns a SUM over the tokens whose label is not -100
(the trainer divides by the label-token count of the whole optimizer step, so
the loss is normalised per label token, not per sequence, and padding never
counts). Inputs are aligned: row t of the logits predicts label t; the
objective does the one-position shift.

Divergences, with p the teacher's and q the student's distribution, both
softened by the temperature T and the result multiplied by T^2 (Hinton et
al.): the gradient of the softened loss shrinks like 1/T^2, so the factor
keeps its scale comparable to the hard-label loss as T changes.

- ``kl``:          KL(p || q), forward ("mean-seeking").
- ``reverse-kl``:  KL(q || p) ("mode-seeking").
- ``jsd``:         generalised Jensen-Shannon with m = beta p + (1 - beta) q,
                   ``[beta KL(p||m) + (1-beta) KL(q||m)] / (beta (1 - beta))``.
                   Unscaled, it tends to zero at both ends; divided by
                   beta (1 - beta) it tends to KL(p||q) as beta -> 0 and to
                   KL(q||p) as beta -> 1, and those are used exactly at the
                   endpoints, so `--beta` moves continuously between the two KLs.

Memory: the logits of a batch are [tokens, vocab]. Upcasting both to fp32 and
taking softmaxes for the whole batch would allocate several fp32 copies of
that. The loss is therefore evaluated `chunk_tokens` positions at a time,
and each chunk's gradient is taken as soon as its loss is (see `_ChunkedLoss`
and `_FusedHeadLoss`), so at most one chunk's fp32 temporaries exist at any
moment; the only full-size extra is the gradient itself, in the logits' own
dtype (which `fused_distillation_loss` writes over the logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from llmopt.distill.kl_grad import kl_ce_to_grad_, workspace_for
from llmopt.train.objective import IGNORE_INDEX

DEFAULT_CHUNK_TOKENS = 16
GPU_CHUNK_TOKENS = 1024
"""On a GPU, launches cost more than memory: a few large chunks."""
"""Rows per chunk. Small chunks stay in cache: the loss of 512 rows x 49,152 took 0.55 s
of CPU at 16 rows per chunk, 0.66 s at 64 and 1.17 s at 256 (bf16, one thread, loaded
machine); the closed-form gradient (`kl_grad`) took 1.4 ms per 16-row chunk, 7.7 at 32."""

DivergenceName = Literal["kl", "reverse-kl", "jsd"]


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row from log-probabilities (finite inputs)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def forward_kl(log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(teacher || student) per row. `beta` is ignored (uniform signature)."""
    return _kl(log_p, log_q)


def reverse_kl(log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(student || teacher) per row. `beta` is ignored (uniform signature)."""
    return _kl(log_q, log_p)


def generalized_jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD per row, scaled so that beta=0 is forward KL and beta=1 reverse KL.

    Args:
        log_p: teacher log-probabilities [n, C].
        log_q: student log-probabilities [n, C].
        beta: teacher weight of the mixture m = beta p + (1 - beta) q, in [0, 1].

    Returns:
        [n] divergences.
    """
    if beta <= 0.0:
        return _kl(log_p, log_q)
    if beta >= 1.0:
        return _kl(log_q, log_p)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return jsd / (beta * (1.0 - beta))


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "kl": forward_kl,
    "reverse-kl": reverse_kl,
    "jsd": generalized_jsd,
}


@dataclass(frozen=True)
class LossSpec:
    """What to compute: divergence, temperature, JSD beta, and the hard-label mix."""

    divergence: str = "kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 1.0
    """Weight of the distillation term; 1 - alpha goes to the hard-label cross-entropy."""
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    """Sequence positions per chunk: fp32 temporaries are a few chunk x vocab arrays."""


@dataclass
class LossSums:
    """Sums over label tokens. `total` is differentiable; the parts are for logging."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    tokens: int


@dataclass
class TopK:
    """A cached teacher: top-k ids and log-probs per token, and the log of the remaining mass.

    The mass outside the top k is kept as one remainder bucket: the teacher
    distribution becomes k + 1 outcomes (the k tokens, "anything else"), the
    student's is coarsened the same way, and the divergence is taken between
    the two (k + 1)-outcome distributions. Nothing is renormalised, so the
    teacher's probabilities stay exact; the error against the full-vocabulary
    loss is only the divergence *inside* the bucket, weighted by its mass.
    """

    ids: torch.Tensor  # [n, k] int
    logprobs: torch.Tensor  # [n, k], at the cache's temperature
    rest: torch.Tensor  # [n], log of 1 - sum(exp(logprobs)), computed from the full distribution


def _chunk_terms(
    student: torch.Tensor,
    teacher: torch.Tensor | TopK,
    labels: torch.Tensor,
    spec: LossSpec,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kd_sum, ce_sum) of one chunk of aligned rows, in fp32."""
    valid = labels != IGNORE_INDEX
    logits = student.float()
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    t = spec.temperature
    log_q = torch.log_softmax(logits / t, dim=-1)
    if isinstance(teacher, TopK):
        log_q, log_p = _coarsen(log_q, teacher)
    else:
        log_p = torch.log_softmax(teacher.float() / t, dim=-1)
    per_row = DIVERGENCES[spec.divergence](log_p, log_q, spec.beta)
    kd = (per_row * valid).sum() * (t * t)
    return kd, ce


def _terms_to_grad_(
    piece: torch.Tensor,
    teacher: torch.Tensor | TopK,
    labels: torch.Tensor,
    spec: LossSpec,
    work: tuple[torch.Tensor, ...] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kd_sum, ce_sum) of one chunk; `piece` is overwritten by the gradient of the total.

    Forward KL against full teacher logits (the default) has a closed-form gradient
    (`llmopt.distill.kl_grad`, 2.5x faster per chunk), given its `work` space; the
    rest go through autograd.
    """
    if work is not None and isinstance(teacher, torch.Tensor):
        return kl_ce_to_grad_(piece, teacher, labels, spec.temperature, spec.alpha, work)
    leaf = piece.detach().float().requires_grad_(True)
    with torch.enable_grad():
        part_kd, part_ce = _chunk_terms(leaf, teacher, labels, spec)
        total = spec.alpha * part_kd + (1.0 - spec.alpha) * part_ce
        (grad,) = torch.autograd.grad(total, leaf)
    piece.copy_(grad)
    return part_kd.detach(), part_ce.detach()


def _coarsen(log_q: torch.Tensor, top: TopK) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher as (k + 1)-outcome log-distributions: top-k tokens + remainder."""
    ids = top.ids.long()
    q_top = log_q.gather(-1, ids)
    q_rest = torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    p = torch.cat([top.logprobs.float(), top.rest.float().unsqueeze(-1)], dim=-1)
    return torch.cat([q_top, q_rest], dim=-1), p


def _teacher_piece(teacher: torch.Tensor | TopK, row: int, a: int, b: int, vocab: int):
    if isinstance(teacher, TopK):
        return TopK(teacher.ids[row, a:b], teacher.logprobs[row, a:b], teacher.rest[row, a:b])
    return teacher[row, a:b, :vocab]


def _as_3d(teacher: torch.Tensor | TopK) -> torch.Tensor | TopK:
    if isinstance(teacher, TopK):
        if teacher.ids.dim() == 2:
            return TopK(teacher.ids[None], teacher.logprobs[None], teacher.rest[None])
        return teacher
    return teacher[None] if teacher.dim() == 2 else teacher


def default_chunk_tokens(device: torch.device) -> int:
    """Loss chunk length when the user gives none: cache-sized on a CPU, large on a GPU."""
    return DEFAULT_CHUNK_TOKENS if device.type == "cpu" else GPU_CHUNK_TOKENS


def _chunks(labels: torch.Tensor, step: int):
    """(row, a, b) of every chunk that holds at least one label token."""
    valid = labels != IGNORE_INDEX
    for row in range(labels.shape[0]):
        for a in range(0, labels.shape[1], step):
            if bool(valid[row, a : a + step].any()):  # all padding: skip the softmaxes
                yield row, a, a + step


class _ChunkedLoss(torch.autograd.Function):
    """Loss and its gradient in one pass over the chunks.

    Each chunk's gradient is taken right away (local autograd on that chunk
    alone) and written into one buffer shaped like the student logits, in
    their dtype. Backward only scales that buffer. Compared with plain
    autograd this never keeps a chunk's fp32 softmaxes alive, never recomputes
    them, and never materialises a full-size zero gradient per chunk (which
    is what slicing's backward does).
    """

    @staticmethod
    def forward(ctx, student, teacher, labels, spec, vocab):
        grad = torch.zeros_like(student)
        kd = student.new_zeros((), dtype=torch.float32)
        ce = student.new_zeros((), dtype=torch.float32)
        step = max(1, spec.chunk_tokens)
        work = workspace_for(spec.divergence, teacher, step, vocab, student.device)
        for row, a, b in _chunks(labels, step):
            piece = grad[row, a:b, :vocab]
            piece.copy_(student[row, a:b, :vocab])
            part_kd, part_ce = _terms_to_grad_(
                piece, _teacher_piece(teacher, row, a, b, vocab), labels[row, a:b], spec, work
            )
            kd += part_kd.detach()
            ce += part_ce.detach()
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(kd, ce)
        return spec.alpha * kd + (1.0 - spec.alpha) * ce, kd, ce

    @staticmethod
    def backward(ctx, g_total, _g_kd, _g_ce):
        (grad,) = ctx.saved_tensors
        return grad.mul_(g_total.to(grad.dtype)), None, None, None, None


def _forward_only(student, teacher, labels, spec, vocab):
    kd = student.new_zeros((), dtype=torch.float32)
    ce = student.new_zeros((), dtype=torch.float32)
    for row, a, b in _chunks(labels, max(1, spec.chunk_tokens)):
        part_kd, part_ce = _chunk_terms(
            student[row, a:b, :vocab],
            _teacher_piece(teacher, row, a, b, vocab),
            labels[row, a:b],
            spec,
        )
        kd, ce = kd + part_kd, ce + part_ce
    return spec.alpha * kd + (1.0 - spec.alpha) * ce, kd, ce


def distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    labels: torch.Tensor,
    spec: LossSpec,
    vocab_size: int | None = None,
) -> LossSums:
    """``alpha * KD + (1 - alpha) * CE`` as sums over label tokens, chunked over the sequence.

    Chunks are slices ``[row, a:b]`` of the inputs, i.e. views: shifted or
    padded logits are never copied whole, not even in their own dtype.

    Args:
        student_logits: [B, L, V_s] (or [L, V_s]) logits aligned with `labels`, any float dtype.
        teacher: [B, L, V_t] teacher logits, or a `TopK` whose tensors have
            leading dims [B, L] (or [L]).
        labels: [B, L] (or [L]) target ids, -100 where ignored.
        spec: divergence, temperature, beta, alpha, chunk length.
        vocab_size: the real shared vocabulary; padded head rows beyond it are
            sliced off both sides (default: the student's logit width).

    Returns:
        `LossSums`; `total` is differentiable w.r.t. the student logits (kd and
        ce are detached, for logging).
    """
    vocab = vocab_size or student_logits.shape[-1]
    if labels.dim() == 1:
        student_logits, labels = student_logits[None], labels[None]
    teacher = _as_3d(teacher)
    if isinstance(teacher, torch.Tensor):
        teacher = teacher.detach()
    if student_logits.requires_grad and torch.is_grad_enabled():
        total, kd, ce = _ChunkedLoss.apply(student_logits, teacher, labels, spec, vocab)
    else:
        total, kd, ce = _forward_only(student_logits, teacher, labels, spec, vocab)
    tokens = int((labels != IGNORE_INDEX).sum())
    return LossSums(total=total, kd=kd, ce=ce, tokens=tokens)


def flatten_teacher(teacher: torch.Tensor | TopK, rows: int, positions: int):
    """Teacher logits [B, L, V] (or a `TopK` with [B, L - 1, ...]) as rows aligned with
    the flat student positions [B * L]: a cache's missing last position is padded
    with a finite uniform entry (its target is ignored, so it adds exactly zero)."""
    if isinstance(teacher, torch.Tensor):
        return teacher.reshape(rows * positions, teacher.shape[-1])
    short = positions - teacher.rest.shape[-1]

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        if short == 0:
            return t
        tail = (0, 0) * (t.dim() - 2) + (0, short)
        return F.pad(t, tail, value=value)

    k = teacher.ids.shape[-1]
    fill = -math.log(k + 1)
    return TopK(
        ids=pad(teacher.ids, 0).reshape(rows * positions, k),
        logprobs=pad(teacher.logprobs, fill).reshape(rows * positions, k),
        rest=pad(teacher.rest, fill).reshape(rows * positions),
    )


def _rows_of(teacher: torch.Tensor | TopK, a: int, b: int, vocab: int):
    if isinstance(teacher, TopK):
        return TopK(teacher.ids[a:b], teacher.logprobs[a:b], teacher.rest[a:b])
    return teacher[a:b, :vocab]


class _FusedHeadLoss(torch.autograd.Function):
    """The student head + distillation loss: gradients in forward, backward scales them.

    The student's logits exist once, in the compute dtype; each chunk of rows
    goes through `_chunk_terms` in fp32 and is overwritten by its gradient,
    then two matmuls give the gradients of the hidden states and the head.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, targets, spec, vocab):
        want = any(ctx.needs_input_grad[:3])
        kind = hidden.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype
        kd = hidden.new_zeros((), dtype=torch.float32)
        ce = hidden.new_zeros((), dtype=torch.float32)
        with torch.autocast(kind, enabled=False):
            h, w = hidden.to(dtype), weight[:vocab].to(dtype)
            logits = F.linear(h, w, None if bias is None else bias[:vocab].to(dtype))
            step, device = max(1, spec.chunk_tokens), hidden.device
            work = workspace_for(spec.divergence, teacher, step, vocab, device) if want else None
            for a in range(0, logits.shape[0], step):
                piece, rows = logits[a : a + step], _rows_of(teacher, a, a + step, vocab)
                if want:
                    part_kd, part_ce = _terms_to_grad_(
                        piece, rows, targets[a : a + step], spec, work
                    )
                else:
                    part_kd, part_ce = _chunk_terms(piece, rows, targets[a : a + step], spec)
                kd += part_kd.detach()
                ce += part_ce.detach()
            grads = _head_grads(ctx.needs_input_grad[:3], logits, h, hidden, weight, bias, vocab)
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(kd, ce)
        return spec.alpha * kd + (1.0 - spec.alpha) * ce, kd, ce

    @staticmethod
    def backward(ctx, g_total, _g_kd, _g_ce):
        def scaled(g):  # in place, as in `llmopt.train.head_loss`: one backward per graph
            return None if g is None else g.mul_(g_total.to(g.dtype))

        return (*(scaled(g) for g in ctx.saved_tensors), None, None, None, None)


def _head_grads(want, grad_logits, h, hidden, weight, bias, vocab):
    """Gradients of hidden, weight and bias from d(loss)/d(logits) [N, vocab] (or None).

    Head rows beyond `vocab` (a padded head) get a zero gradient.
    """
    want_h, want_w, want_b = want
    w = weight[:vocab].to(grad_logits.dtype)
    grad_h = (grad_logits @ w).to(hidden.dtype) if want_h else None
    grad_w = grad_b = None
    if want_w:
        part = (grad_logits.T @ h).to(weight.dtype)
        if vocab == weight.shape[0]:
            grad_w = part
        else:
            grad_w = torch.zeros_like(weight)
            grad_w[:vocab] = part
    if want_b:
        grad_b = torch.zeros_like(bias)
        grad_b[:vocab] = grad_logits.sum(0, dtype=torch.float32).to(bias.dtype)
    return grad_h, grad_w, grad_b


def fused_distillation_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    teacher: torch.Tensor | TopK,
    targets: torch.Tensor,
    spec: LossSpec,
    vocab_size: int | None = None,
) -> LossSums:
    """`distillation_loss` of `head(hidden)` without materialising the student's fp32 logits.

    Args:
        hidden: [N, d] the student head's input, one row per position.
        head: the student's output projection (weight [V_s, d], optional bias).
        teacher: [N, V_t] teacher logits, or a `TopK` with [N, k] / [N] tensors
            (see `flatten_teacher`), row-aligned with `hidden`.
        targets: [N] the token each row predicts, -100 where ignored.
        spec: divergence, temperature, beta, alpha, rows per chunk.
        vocab_size: the shared vocabulary (default: the head's width).

    Returns:
        `LossSums` as `distillation_loss` gives for the same logits (equal up to
        float summation order); `tokens` is -1: counting would need a device sync.
    """
    vocab = vocab_size or head.weight.shape[0]
    if isinstance(teacher, torch.Tensor):
        teacher = teacher.detach()
    total, kd, ce = _FusedHeadLoss.apply(
        hidden, head.weight, head.bias, teacher, targets, spec, vocab
    )
    return LossSums(total=total, kd=kd, ce=ce, tokens=-1)


def topk_from_logits(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The teacher's top-k log-probs at `temperature` and the exact log-mass of the rest.

    Args:
        logits: [..., V] teacher logits (already sliced to the real vocabulary).
        k: entries to keep, 1 <= k < V.
        temperature: the softening the cache is made for.

    Returns:
        `TopK` with leading dims of `logits`; ids int32, log-probs and rest fp32.
    """
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    rest = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
    return TopK(ids=ids.to(torch.int32), logprobs=values, rest=rest)
