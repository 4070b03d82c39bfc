"""Each distillation loss against a direct reference computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from llmopt.distill.losses import LossSpec, distillation_loss, topk_from_logits

V = 37


def _batch(seed: int = 0, b: int = 3, n: int = 11, vocab: int = V):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(b, n, vocab, generator=gen) * 2
    t = torch.randn(b, n, vocab, generator=gen) * 3
    y = torch.randint(0, vocab, (b, n), generator=gen)
    y[0, :4] = -100  # padding that must not count
    y[2, -3:] = -100
    return s, t, y


def _ref_terms(s, t, y, temperature):
    """Per-row forward KL, reverse KL (float64, torch.kl_div) and the valid mask."""
    log_q = torch.log_softmax(s.double() / temperature, -1).reshape(-1, s.shape[-1])
    log_p = torch.log_softmax(t.double() / temperature, -1).reshape(-1, s.shape[-1])
    fwd = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    rev = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    return fwd, rev, (y.reshape(-1) != -100).double(), log_p, log_q


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_forward_and_reverse_kl_match_reference_with_t_squared(temperature):
    s, t, y = _batch()
    fwd, rev, valid, _, _ = _ref_terms(s, t, y, temperature)
    for name, ref in (("kl", fwd), ("reverse-kl", rev)):
        out = distillation_loss(s, t, y, LossSpec(divergence=name, temperature=temperature))
        expected = temperature**2 * (ref * valid).sum()
        assert out.kd.item() == pytest.approx(expected.item(), rel=1e-5)
        assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)  # alpha = 1
        assert out.tokens == int(valid.sum())


def test_jsd_matches_reference():
    s, t, y = _batch(1)
    _, _, valid, log_p, log_q = _ref_terms(s, t, y, 1.5)
    beta = 0.3
    p, q = log_p.exp(), log_q.exp()
    m = beta * p + (1 - beta) * q
    kl_pm = (p * (p / m).log()).sum(-1)
    kl_qm = (q * (q / m).log()).sum(-1)
    ref = (beta * kl_pm + (1 - beta) * kl_qm) / (beta * (1 - beta))
    expected = 1.5**2 * (ref * valid).sum()
    out = distillation_loss(s, t, y, LossSpec(divergence="jsd", beta=beta, temperature=1.5))
    assert out.kd.item() == pytest.approx(expected.item(), rel=1e-5)


def test_jsd_endpoints_are_forward_and_reverse_kl_not_zero():
    s, t, y = _batch(2)
    fwd = distillation_loss(s, t, y, LossSpec(divergence="kl")).kd.item()
    rev = distillation_loss(s, t, y, LossSpec(divergence="reverse-kl")).kd.item()
    assert fwd > 1.0 and rev > 1.0 and abs(fwd - rev) > 1e-2

    def jsd(beta):
        return distillation_loss(s, t, y, LossSpec(divergence="jsd", beta=beta)).kd.item()

    assert jsd(0.0) == pytest.approx(fwd, rel=1e-6)
    assert jsd(1.0) == pytest.approx(rev, rel=1e-6)
    # Continuous at the ends: the scaled JSD approaches the KLs as beta -> 0 / 1.
    assert abs(jsd(1e-5) - fwd) < abs(jsd(1e-3) - fwd) < abs(jsd(1e-2) - fwd)
    assert jsd(1e-5) == pytest.approx(fwd, rel=1e-3)
    assert jsd(1 - 1e-5) == pytest.approx(rev, rel=1e-2)


def test_alpha_mixes_with_hard_label_cross_entropy():
    s, t, y = _batch(3)
    ce_ref = F.cross_entropy(s.reshape(-1, V), y.reshape(-1), ignore_index=-100, reduction="sum")
    out = distillation_loss(s, t, y, LossSpec(alpha=0.25, temperature=2.0))
    assert out.ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert out.total.item() == pytest.approx(0.25 * out.kd.item() + 0.75 * ce_ref.item(), rel=1e-5)
    hard = distillation_loss(s, t, y, LossSpec(alpha=0.0))
    assert hard.total.item() == pytest.approx(ce_ref.item(), rel=1e-5)


def test_padding_positions_do_not_matter():
    s, t, y = _batch(4)
    base = distillation_loss(s, t, y, LossSpec(divergence="jsd", alpha=0.5)).total.item()
    s2, t2 = s.clone(), t.clone()
    s2[y == -100] = 100.0 * torch.randn_like(s2[y == -100])
    t2[y == -100] = -7.0
    other = distillation_loss(s2, t2, y, LossSpec(divergence="jsd", alpha=0.5)).total.item()
    assert other == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("divergence", ["kl", "reverse-kl", "jsd"])
def test_chunked_equals_unchunked_values_and_gradients(divergence):
    s, t, y = _batch(5)
    results = []
    for chunk in (4, 10_000):
        leaf = s.clone().requires_grad_(True)
        spec = LossSpec(divergence=divergence, temperature=2.0, alpha=0.7, chunk_tokens=chunk)
        out = distillation_loss(leaf, t, y, spec)
        out.total.backward()
        results.append((out.total.detach(), leaf.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_gradient_matches_autograd_reference():
    s, t, y = _batch(6)
    leaf = s.clone().requires_grad_(True)
    distillation_loss(leaf, t, y, LossSpec(temperature=2.0, chunk_tokens=5)).total.backward()
    ref_leaf = s.clone().requires_grad_(True)
    log_q = torch.log_softmax(ref_leaf / 2.0, -1)
    log_p = torch.log_softmax(t / 2.0, -1)
    per = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    (4.0 * (per * (y != -100)).sum()).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-5, atol=1e-7)


def test_padded_head_is_sliced_to_the_real_vocabulary():
    s, t, y = _batch(7)
    padded_t = torch.cat([t, torch.full((*t.shape[:-1], 27), 50.0)], dim=-1)
    padded_s = torch.cat([s, torch.randn(*s.shape[:-1], 11)], dim=-1)
    ref = distillation_loss(s, t, y, LossSpec(alpha=0.5)).total.item()
    out = distillation_loss(padded_s, padded_t, y, LossSpec(alpha=0.5), vocab_size=V)
    assert out.total.item() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("divergence", ["kl", "reverse-kl", "jsd"])
def test_topk_remainder_bucket_is_exact_when_the_bucket_is_one_token(divergence):
    s, t, y = _batch(8)
    spec = LossSpec(divergence=divergence, temperature=2.0)
    full = distillation_loss(s, t, y, spec).kd.item()
    top = topk_from_logits(t, k=V - 1, temperature=2.0)
    assert distillation_loss(s, top, y, spec).kd.item() == pytest.approx(full, rel=1e-5)


def test_topk_forward_kl_error_is_exactly_the_within_bucket_divergence():
    s, t, y = _batch(9)
    t = t * 2  # a peakier teacher, like a trained LM
    k, temp = 6, 1.0
    spec = LossSpec(divergence="kl", temperature=temp)
    full = distillation_loss(s, t, y, spec).kd.item()
    top = topk_from_logits(t, k=k, temperature=temp)
    cached = distillation_loss(s, top, y, spec).kd.item()
    # Chain rule of KL: full = coarse + sum_tokens p_rest * KL(p_tail || q_tail).
    log_p = torch.log_softmax(t.double(), -1)
    log_q = torch.log_softmax(s.double(), -1)
    tail = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, top.ids.long(), False)
    lp = log_p.masked_fill(~tail, -math.inf)
    lq = log_q.masked_fill(~tail, -math.inf)
    lp_n = lp - torch.logsumexp(lp, -1, keepdim=True)
    lq_n = lq - torch.logsumexp(lq, -1, keepdim=True)
    within = torch.where(tail, lp_n.exp() * (lp_n - lq_n), 0.0).sum(-1)
    gap = (top.rest.double().exp() * within * (y != -100)).sum().item()
    assert gap > 0
    assert full - cached == pytest.approx(gap, rel=1e-4)


class _LargestFloat32(TorchDispatchMode):
    """Records the largest fp32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("teacher_kind", ["logits", "topk"])
def test_no_fp32_copy_of_the_whole_batch_exists(teacher_kind):
    b, n, vocab, chunk = 4, 64, 1000, 16
    s, t, y = _batch(10, b=b, n=n, vocab=vocab)
    leaf = s.to(torch.bfloat16).requires_grad_(True)
    teacher = t.to(torch.bfloat16) if teacher_kind == "logits" else topk_from_logits(t, 32)
    spec = LossSpec(divergence="jsd", temperature=2.0, alpha=0.5, chunk_tokens=chunk)
    with _LargestFloat32() as probe:
        distillation_loss(leaf, teacher, y, spec).total.backward()
    assert leaf.grad.dtype == torch.bfloat16 and leaf.grad.abs().sum() > 0
    assert probe.largest <= chunk * vocab < b * n * vocab


def _head_case(seed: int, vocab: int = V, pad: int = 0, bias: bool = True):
    """Flat student hidden states, a (possibly padded) head, teacher logits and targets."""
    gen = torch.Generator().manual_seed(seed)
    rows, width = 30, 8
    hidden = torch.randn(rows, width, generator=gen)
    head = torch.nn.Linear(width, vocab + pad, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab + pad, width, generator=gen))
        if bias:
            head.bias.copy_(torch.randn(vocab + pad, generator=gen))
    teacher = torch.randn(rows, vocab + pad, generator=gen) * 3
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[:5] = -100
    targets[-1] = -100
    return hidden, head, teacher, targets


def _grads(loss, *tensors):
    loss.backward()
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


@pytest.mark.parametrize("divergence", ["kl", "reverse-kl", "jsd"])
@pytest.mark.parametrize("pad", [0, 5])
def test_fused_head_loss_equals_the_logits_path(divergence, pad):
    from llmopt.distill.losses import fused_distillation_loss

    hidden, head, teacher, targets = _head_case(11, pad=pad)
    hidden.requires_grad_(True)
    spec = LossSpec(divergence=divergence, temperature=2.0, alpha=0.7, chunk_tokens=7)
    ref = distillation_loss(head(hidden), teacher, targets, spec, vocab_size=V)
    want = _grads(ref.total * 3.0, hidden, head.weight, head.bias)
    got = fused_distillation_loss(hidden, head, teacher, targets, spec, vocab_size=V)
    have = _grads(got.total * 3.0, hidden, head.weight, head.bias)  # backward scales
    for a, b in ((ref.total, got.total), (ref.kd, got.kd), (ref.ce, got.ce)):
        assert b.item() == pytest.approx(a.item(), rel=1e-5)
    for a, b in zip(want, have, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if pad:
        assert have[1][V:].abs().sum() == 0  # padded head rows get no gradient


def test_fused_head_loss_with_a_topk_teacher():
    from llmopt.distill.losses import flatten_teacher, fused_distillation_loss

    hidden, head, teacher, targets = _head_case(12, bias=False)
    spec = LossSpec(divergence="kl", temperature=2.0, alpha=0.5, chunk_tokens=4)
    # A cache holds one position less per row than the student sees: 3 rows of 10.
    top = topk_from_logits(teacher.view(3, 10, V)[:, :-1], k=6, temperature=2.0)
    targets.view(3, 10)[:, -1] = -100
    flat = flatten_teacher(top, 3, 10)
    assert flat.ids.shape == (30, 6) and torch.isfinite(flat.logprobs).all()
    ref = distillation_loss(head(hidden).view(3, 10, V)[:, :-1], top,
                            targets.view(3, 10)[:, :-1], spec)  # fmt: skip
    got = fused_distillation_loss(hidden, head, flat, targets, spec)
    assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-5)


def test_fused_head_loss_keeps_no_fp32_logits_of_the_batch():
    from llmopt.distill.losses import fused_distillation_loss

    rows, width, vocab, chunk = 256, 16, 1000, 16
    gen = torch.Generator().manual_seed(13)
    hidden = torch.randn(rows, width, generator=gen).requires_grad_(True)
    head = torch.nn.Linear(width, vocab, bias=False)
    teacher = (torch.randn(rows, vocab, generator=gen) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    spec = LossSpec(divergence="kl", temperature=2.0, alpha=0.5, chunk_tokens=chunk)
    with _LargestFloat32() as probe, torch.autocast("cpu", dtype=torch.bfloat16):
        fused_distillation_loss(hidden, head, teacher, targets, spec).total.backward()
    assert hidden.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
    # fp32 tensors: chunks, and the head's own gradient [vocab, width]; never rows x vocab.
    assert probe.largest <= max(chunk * vocab, vocab * width) < rows * vocab
