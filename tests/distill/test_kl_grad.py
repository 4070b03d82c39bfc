"""The closed-form forward-KL + CE chunk gives autograd's values and gradient."""

from __future__ import annotations

import pytest
import torch

from llmopt.distill.kl_grad import kl_ce_to_grad_
from llmopt.distill.losses import LossSpec, _chunk_terms


def _autograd(student, teacher, labels, spec):
    leaf = student.detach().float().requires_grad_(True)
    kd, ce = _chunk_terms(leaf, teacher, labels, spec)
    (grad,) = torch.autograd.grad(spec.alpha * kd + (1 - spec.alpha) * ce, leaf)
    return kd.detach(), ce.detach(), grad


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_values_and_gradient_match_autograd(temperature, alpha):
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 50) * 3, torch.randn(6, 50) * 3
    labels = torch.tensor([3, -100, 7, 49, 0, -100])
    spec = LossSpec(divergence="kl", temperature=temperature, alpha=alpha)
    kd_ref, ce_ref, grad_ref = _autograd(student, teacher, labels, spec)
    piece = student.clone()
    kd, ce = kl_ce_to_grad_(piece, teacher, labels, temperature, alpha)
    torch.testing.assert_close(kd, kd_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, ce_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(piece, grad_ref, rtol=1e-5, atol=1e-6)
    assert piece[1].abs().max() == 0 and piece[5].abs().max() == 0  # ignored rows


def test_bf16_piece_gets_the_gradient_in_its_dtype_and_the_teacher_is_untouched():
    torch.manual_seed(1)
    student = (torch.randn(4, 64) * 2).bfloat16()
    with torch.inference_mode():  # the teacher's logits are inference tensors in training
        teacher = torch.randn(4, 64)
    kept = teacher.clone()
    labels = torch.tensor([1, 2, 3, 4])
    spec = LossSpec(divergence="kl", temperature=2.0, alpha=0.5)
    _, _, grad_ref = _autograd(student, teacher, labels, spec)
    piece = student.clone()
    kl_ce_to_grad_(piece, teacher, labels, 2.0, 0.5)
    assert piece.dtype == torch.bfloat16
    torch.testing.assert_close(piece, grad_ref.bfloat16())
    assert torch.equal(teacher, kept)
