"""Sharing in memory: counts, storage, distinct modules, gradients, KV cache, relaxation."""

from __future__ import annotations

import pytest
import torch

from llmopt import load_model
from llmopt.errors import BadInput
from llmopt.evaluate import model_footprint
from llmopt.models.arch import ArchAdapter
from llmopt.share.apply import layout_of, share_layers, tie_embeddings
from llmopt.share.plan import make_plan
from llmopt.share.storage import dense_state_dict


def _block_params(model) -> int:
    return sum(p.numel() for p in ArchAdapter(model).blocks()[0].parameters())


def _block_vector_params(model) -> int:
    return sum(p.numel() for p in ArchAdapter(model).blocks()[0].parameters() if p.ndim == 1)


def test_unique_parameters_drop_by_exactly_the_shared_blocks(tiny_model):
    before = model_footprint(tiny_model)
    per_block = _block_params(tiny_model)
    share_layers(tiny_model, make_plan(4, 2, "cycle"))
    after = model_footprint(tiny_model)
    assert after.unique_params == before.unique_params - 2 * per_block
    assert after.total_params == before.total_params
    assert after.param_bytes == before.param_bytes - 2 * per_block * 4


def test_shared_layers_are_one_storage_but_distinct_modules(tiny_model):
    share_layers(tiny_model, make_plan(4, 2, "sequence"))
    blocks = ArchAdapter(tiny_model).blocks()
    for (name, a), (_, b) in zip(
        blocks[0].named_parameters(), blocks[1].named_parameters(), strict=True
    ):
        assert a is b, name
    assert all(
        a is not b for a, b in zip(blocks[0].parameters(), blocks[2].parameters(), strict=True)
    )
    assert blocks[0] is not blocks[1]
    attn = [ArchAdapter(tiny_model).attention(b) for b in blocks]
    assert attn[0] is not attn[1]
    if hasattr(attn[0], "layer_idx"):  # each layer keeps its own KV-cache slot
        assert [a.layer_idx for a in attn] == [0, 1, 2, 3]


def test_average_initialisation_is_the_mean_of_the_group(tiny_llama):
    adapter = ArchAdapter(tiny_llama)
    expected = sum(adapter.blocks()[i].mlp.up_proj.weight.detach().clone() for i in (1, 3)) / 2
    share_layers(tiny_llama, make_plan(4, 2, "cycle"), init="average")
    torch.testing.assert_close(adapter.blocks()[3].mlp.up_proj.weight.detach(), expected)


def test_first_and_stepwise_copy_one_layer(tiny_llama):
    original = [
        b.self_attn.q_proj.weight.detach().clone() for b in ArchAdapter(tiny_llama).blocks()
    ]
    first = load_model("tiny-llama")
    share_layers(first, make_plan(4, 2, "cycle"), init="first")
    assert torch.equal(ArchAdapter(first).blocks()[2].self_attn.q_proj.weight, original[0])
    share_layers(tiny_llama, make_plan(4, 2, "cycle"), init="stepwise")
    # Stepwise: block 1 of 2 comes from the last layer (evenly spaced over the depth).
    assert torch.equal(ArchAdapter(tiny_llama).blocks()[1].self_attn.q_proj.weight, original[3])


def test_stepwise_reads_the_original_weights_of_another_group(tiny_llama):
    from llmopt.share.plan import parse_map

    original = ArchAdapter(tiny_llama).blocks()[3].mlp.gate_proj.weight.detach().clone()
    # Block 1 (layers 1, 2) starts from layer 3, which itself joins block 0.
    share_layers(tiny_llama, parse_map("0,1,1,0", 4), init="stepwise", lora_rank=2)
    assert torch.equal(ArchAdapter(tiny_llama).blocks()[1].mlp.gate_proj.base.weight, original)


def _untied_copy(model, family_spec: str):
    """The same network without sharing: every layer its own copy of the values."""
    plain = load_model(family_spec)
    plain.load_state_dict(dense_state_dict(model))
    return plain


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_gradients_accumulate_into_the_shared_tensor(spec, tokens):
    model = load_model(spec)
    share_layers(model, make_plan(4, 2, "cycle"))
    plain = _untied_copy(model, spec)
    for m in (model, plain):  # eval mode: no dropout, so both see the same function
        m(tokens, labels=tokens).loss.backward()
    shared = ArchAdapter(model).blocks()[0]
    copies = ArchAdapter(plain).blocks()
    for name, param in shared.named_parameters():
        summed = copies[0].get_parameter(name).grad + copies[2].get_parameter(name).grad
        torch.testing.assert_close(param.grad, summed, rtol=1e-4, atol=1e-6)


def test_a_training_step_changes_all_users_identically(tiny_model, tokens):
    share_layers(tiny_model, make_plan(4, 2, "cycle"))
    blocks = ArchAdapter(tiny_model).blocks()
    before = [p.detach().clone() for p in blocks[0].parameters()]
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    tiny_model.train()
    tiny_model(tokens, labels=tokens).loss.backward()
    optimizer.step()
    for old, a, b in zip(before, blocks[0].parameters(), blocks[2].parameters(), strict=True):
        assert not torch.equal(old, a.detach())
        assert torch.equal(a, b)
    # The optimizer sees each shared tensor once.
    assert len(optimizer.param_groups[0]["params"]) == len(list(tiny_model.parameters()))


def test_generation_with_kv_cache_equals_generation_without(tiny_model, tokens):
    share_layers(tiny_model, make_plan(4, 2, "cycle"), lora_rank=4)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 1}
    cached = tiny_model.generate(tokens[:1, :8], use_cache=True, **kwargs)
    uncached = tiny_model.generate(tokens[:1, :8], use_cache=False, **kwargs)
    assert cached.shape[1] == 20
    assert torch.equal(cached, uncached)


def test_full_rank_relaxation_reproduces_the_original(tiny_model, tokens):
    with torch.no_grad():
        reference = tiny_model(tokens).logits
    share_layers(tiny_model, make_plan(4, 1, "cycle"), init="average", lora_rank=10_000)
    with torch.no_grad():
        relaxed = tiny_model(tokens).logits
    torch.testing.assert_close(relaxed, reference, rtol=1e-4, atol=1e-4)


def test_higher_rank_gets_closer_to_the_original():
    original = load_model("tiny-llama").state_dict()
    errors = []
    for rank in (1, 4, 16, 64):
        model = load_model("tiny-llama")
        share_layers(model, make_plan(4, 1, "cycle"), lora_rank=rank)
        merged = dense_state_dict(model)
        # Truncated SVD is the best rank-r fit, so the weight error falls with r.
        errors.append(sum((merged[k] - v).norm().item() ** 2 for k, v in original.items()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-8 < errors[0]


def test_relaxed_unique_count_adds_the_deltas_and_the_vectors(tiny_llama):
    before = model_footprint(tiny_llama).unique_params
    adapter = ArchAdapter(tiny_llama)
    matrices = _block_params(tiny_llama) - _block_vector_params(tiny_llama)
    rank = 4
    lora = sum(
        rank * sum(m.weight.shape) for m in adapter.block_linears(adapter.blocks()[0]).values()
    )
    share_layers(tiny_llama, make_plan(4, 2, "sequence"), lora_rank=rank)
    # Two matrices sets are gone; each of the 4 layers gains its own deltas.
    assert model_footprint(tiny_llama).unique_params == before - 2 * matrices + 4 * lora


def test_a_block_of_one_layer_is_left_alone(tiny_llama):
    layer3 = ArchAdapter(tiny_llama).blocks()[3]
    weight = layer3.mlp.down_proj.weight
    share_layers(tiny_llama, make_plan(4, 3, "adjacent"), lora_rank=2)  # (0, 1, 2, 2)
    blocks = ArchAdapter(tiny_llama).blocks()
    assert blocks[0].mlp.down_proj.weight is not blocks[1].mlp.down_proj.weight
    assert layer3.mlp.down_proj.base.weight is not weight  # layer 3 is in the shared pair
    assert blocks[1].mlp.down_proj.__class__.__name__ == "Linear"  # no delta where alone


def test_tie_embeddings(tiny_llama, tokens):
    adapter = ArchAdapter(tiny_llama)
    before = model_footprint(tiny_llama).unique_params
    assert tie_embeddings(tiny_llama)
    assert adapter.head().weight is adapter.embedding().weight
    assert model_footprint(tiny_llama).unique_params == before - adapter.embedding().weight.numel()
    assert tiny_llama.config.tie_word_embeddings
    assert not tie_embeddings(tiny_llama)


def test_refuses_bad_requests(tiny_llama):
    with pytest.raises(BadInput, match="6 layers, the model 4"):
        share_layers(tiny_llama, make_plan(6, 2, "cycle"))
    with pytest.raises(BadInput, match="--init 'mean'"):
        share_layers(tiny_llama, make_plan(4, 2, "cycle"), init="mean")
    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    assert layout_of(tiny_llama).plan.block_of == (0, 1, 0, 1)
    with pytest.raises(BadInput, match="already shared"):
        share_layers(tiny_llama, make_plan(4, 2, "cycle"))
