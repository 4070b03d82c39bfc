"""One block: the losses' values, zeros kept through Adam steps, the loss falling."""

from __future__ import annotations

import torch

from llmopt import load_model
from llmopt.calibrate import capture_block_inputs
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.reconstruct.block import Batch, ZeroGuard, block_loss, first_output, train_block

from .conftest import calibration, prune_half


def test_the_losses_read_as_fractions():
    target = torch.randn(2, 5, 8)
    assert float(block_loss("mse", target, target)) == 0.0
    # Twice the target is off by exactly the target's own energy.
    assert torch.isclose(block_loss("mse", 2 * target, target), torch.tensor(1.0))
    a, b = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    a[..., 0], b[..., 1] = 1.0, 3.0  # orthogonal tokens: cosine loss 1
    assert torch.isclose(block_loss("cosine", a, b), torch.tensor(1.0))
    assert torch.isclose(block_loss("cosine", 5 * b, b), torch.tensor(0.0), atol=1e-6)
    both = block_loss("mse+cosine", 2 * target, target)
    assert torch.isclose(both, torch.tensor(1.0), atol=1e-5)


def test_a_massive_sink_token_does_not_outweigh_the_others():
    target = torch.randn(1, 4, 8)
    target[0, 0] *= 1000.0  # an attention sink: nearly all of the block's energy
    out = target.clone()
    out[0, 1:] *= 2.0  # every other token off by its own norm
    assert torch.isclose(block_loss("mse", out, target), torch.tensor(0.75))


def _block_batches(teacher, student, layer: int = 1) -> list[Batch]:
    """Batches of the student's block `layer` whose targets are the teacher block's outputs."""
    calib = calibration()
    inputs = capture_block_inputs(teacher, calib.ids, calib.batch_size, torch.device("cpu"))
    block = ArchAdapter(teacher).blocks()[layer]
    with torch.no_grad():
        targets = [first_output(block(h, *a, **k)) for h, a, k in inputs.batches()]
    return [Batch(h, a, k, t) for (h, a, k), t in zip(inputs.batches(), targets, strict=True)]


def _loss(block, batches: list[Batch]) -> float:
    with torch.no_grad():
        outs = [first_output(block(b.hidden, *b.args, **b.kwargs)) for b in batches]
    return sum(float(block_loss("mse", o, b.target)) for o, b in zip(outs, batches, strict=True))


def test_adam_steps_lower_the_loss_and_keep_every_zero():
    teacher = load_model("tiny-llama")
    student = prune_half(load_model("tiny-llama"))
    batches = _block_batches(teacher, student)
    block = ArchAdapter(student).blocks()[1]
    linears = ArchAdapter(student).block_linears(block)
    zeros = {n: weight_out_in(m) == 0 for n, m in linears.items()}
    before = {n: weight_out_in(m).clone() for n, m in linears.items()}
    start = _loss(block, batches)
    curve = train_block(block, batches, kind="mse", steps=20, lr=1e-3, max_grad_norm=1.0, seed=0)
    assert len(curve) == 20
    assert _loss(block, batches) < 0.5 * start
    for name, module in linears.items():
        weight = weight_out_in(module)
        assert torch.equal(weight == 0, zeros[name]), name  # exactly the same zeros
        assert not torch.equal(weight, before[name]), name  # and the rest moved


def test_the_guard_counts_the_zeros_of_every_linear_once():
    model = prune_half(load_model("tiny-gpt2"))  # Conv1D linears, stored transposed
    block = ArchAdapter(model).blocks()[0]
    expected = sum(
        int((weight_out_in(m) == 0).sum()) for m in ArchAdapter(model).block_linears(block).values()
    )
    guard = ZeroGuard(block)
    assert guard.zeros == expected
    for weight, _ in guard.masks:
        weight.data.add_(1.0)
    guard.restore()
    assert ZeroGuard(block).zeros == expected
