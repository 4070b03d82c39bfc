"""The proxy: KL from the input to a candidate on held-out tokens."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmopt.auto.proxy import Reference


@pytest.fixture
def held_out(tiny_tokenizer):
    from llmopt.data.corpus import load_corpus

    return load_corpus("pydoc", tiny_tokenizer, split="validation").ids


def _damaged(model, fraction: float):
    """The model with the smallest `fraction` of every block linear set to zero."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in out.named_parameters():
            if "layers" in name and param.dim() == 2:
                cut = param.abs().flatten().kthvalue(int(fraction * param.numel())).values
                param[param.abs() <= cut] = 0
    return out


def test_the_input_is_at_zero_kl_from_itself(tiny_llama, held_out):
    reference = Reference(tiny_llama, held_out, 64, torch.float32)
    # Not exactly 0: the reference keeps the input's log-probabilities in float16.
    assert reference.kl(copy.deepcopy(tiny_llama), 256) == pytest.approx(0.0, abs=1e-5)


def test_kl_is_the_mean_over_positions_of_the_input_to_candidate_divergence(tiny_llama, held_out):
    candidate = _damaged(tiny_llama, 0.5)
    reference = Reference(tiny_llama, held_out, 64, torch.float32)
    with torch.no_grad():
        ids = held_out[:128].view(2, 64)
        p = F.log_softmax(tiny_llama(input_ids=ids).logits, -1)
        q = F.log_softmax(candidate(input_ids=ids).logits, -1)
    direct = (p.exp() * (p - q)).sum(-1).mean()
    # the reference keeps the input's log-probabilities in float16
    assert reference.kl(candidate, 128) == pytest.approx(float(direct), rel=1e-2)


def test_more_damage_is_more_kl_and_tokens_are_whole_windows(tiny_llama, held_out):
    reference = Reference(tiny_llama, held_out, 64, torch.bfloat16)
    light, heavy = _damaged(tiny_llama, 0.3), _damaged(tiny_llama, 0.7)
    assert 0 < reference.kl(light, 256) < reference.kl(heavy, 256)
    assert reference.windows(100) == 1 and reference.windows(256) == 4
    assert reference.windows(10**9) == held_out.numel() // 64
