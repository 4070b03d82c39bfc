"""The fused head + cross-entropy equals the plain path: loss and every gradient."""

from __future__ import annotations

import pytest
import torch

from llmopt.train import head_loss
from llmopt.train.objective import LMObjective


def _batch(seed: int = 0, rows: int = 3, length: int = 20) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # one padded row: its tail must not count
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _loss_and_grads(model_dir, fused: bool, dtype: torch.dtype | None):
    from llmopt.models import load_model

    model = load_model(model_dir).train()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = LMObjective(fused=fused)(model, _batch())
    out.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.loss_sum.detach(), grads


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("chunk", [head_loss.CHUNK_ELEMENTS, 700])  # 700: many small chunks
def test_fused_equals_plain_in_fp32(tiny_llama_dir, monkeypatch, chunk):
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", chunk)
    plain_loss, plain = _loss_and_grads(tiny_llama_dir, fused=False, dtype=None)
    fused_loss, fused = _loss_and_grads(tiny_llama_dir, fused=True, dtype=None)
    assert float(fused_loss) == pytest.approx(float(plain_loss), rel=1e-6)
    assert set(fused) == set(plain)
    assert _max_rel(plain, fused) < 1e-5


def test_fused_tracks_plain_under_bf16_autocast(tiny_llama_dir):
    plain_loss, plain = _loss_and_grads(tiny_llama_dir, fused=False, dtype=torch.bfloat16)
    fused_loss, fused = _loss_and_grads(tiny_llama_dir, fused=True, dtype=torch.bfloat16)
    # Same bf16 matmuls, same fp32 softmax: only summation order differs (bf16 ulp 4e-3).
    assert float(fused_loss) == pytest.approx(float(plain_loss), rel=1e-4)
    assert _max_rel(plain, fused) < 1e-2


def test_head_with_bias_and_no_grad(tiny_llama):
    """A biased head (other families) and the no-grad path (evaluation)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 6))
    labels[0, 4:] = -100
    ref_logits = head(hidden)
    targets = labels[:, 1:].reshape(-1)
    ref = torch.nn.functional.cross_entropy(
        ref_logits[:, :-1].reshape(-1, 50), targets, ignore_index=-100, reduction="sum"
    )
    ref.backward()
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    got = head_loss.linear_cross_entropy_sum(hidden, head, labels)
    (got * 2.0).backward()  # the trainer scales the loss: backward must scale every gradient
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for want, have in zip(ref_grads, [hidden.grad, head.weight.grad, head.bias.grad], strict=True):
        torch.testing.assert_close(have, 2.0 * want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert float(head_loss.linear_cross_entropy_sum(hidden, head, labels)) == pytest.approx(
            float(ref.detach()), rel=1e-6
        )


def test_model_output_is_untouched_after_capture(tiny_llama):
    """The hook lives only inside the context: the next plain forward has full logits."""
    ids = _batch()["input_ids"]
    with torch.no_grad():
        with head_loss.capture_head_input(head_loss.find_head(tiny_llama)) as found:
            inside = tiny_llama(input_ids=ids).logits
        after = tiny_llama(input_ids=ids).logits
    assert inside.shape[1] == 0 and found.hidden.shape[:2] == ids.shape
    assert after.shape[:2] == ids.shape


def test_compiled_models_take_the_plain_path(tiny_llama):
    class Compiled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert head_loss.find_head(tiny_llama) is tiny_llama.lm_head
    assert head_loss.find_head(Compiled(tiny_llama)) is None
