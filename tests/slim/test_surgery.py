"""Surgery: the smaller model computes what the plan says, for every supported family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmopt.models.arch import ArchAdapter, get_path, qkv_names, weight_out_in
from llmopt.slim.masking import masked
from llmopt.slim.plan import full_plan
from llmopt.slim.shape import shape_of, slim_config
from llmopt.slim.surgery import build_slim_model, expand_units

TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_expand_units():
    assert expand_units(torch.tensor([1, 3]), 2).tolist() == [2, 3, 6, 7]


def test_removing_nothing_is_an_exact_no_op(family, kit):
    model = kit.make_model(family)
    slim = build_slim_model(model, full_plan(shape_of(model.config)))
    before, after = model.state_dict(), slim.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ids = kit.tokens()
    assert torch.equal(kit.logits(model, ids), kit.logits(slim, ids))


def test_channels_with_zero_down_columns_change_nothing(family, kit):
    model = kit.make_model(family)
    adapter, original = ArchAdapter(model), shape_of(model.config)
    kept = []
    for i, block in enumerate(adapter.blocks()):
        dead = [(i * 7 + 3 * j) % original.ffn for j in range(32)]  # a different set per layer
        weight_out_in(get_path(block, adapter.spec.mlp_out[0]))[:, dead] = 0.0
        kept.append(sorted(set(range(original.ffn)) - set(dead)))
    slim = build_slim_model(model, kit.make_plan(original, channels=kept))
    assert shape_of(slim.config).ffn == original.ffn - 32
    ids = kit.tokens()
    assert torch.allclose(kit.logits(model, ids), kit.logits(slim, ids), **TOL)


def test_removing_an_identity_layer_changes_nothing(family, kit):
    model = kit.make_model(family)
    adapter = ArchAdapter(model)
    block = adapter.blocks()[1]
    for name in adapter.spec.attn_out + adapter.spec.mlp_out:
        linear = get_path(block, name)
        weight_out_in(linear).zero_()
        if getattr(linear, "bias", None) is not None:
            linear.bias.data.zero_()
    slim = build_slim_model(model, kit.make_plan(shape_of(model.config), layers=[0, 2, 3]))
    assert slim.config.num_hidden_layers == 3
    ids = kit.tokens()
    assert torch.allclose(kit.logits(model, ids), kit.logits(slim, ids), **TOL)


def test_removing_a_kv_group_equals_silencing_its_values(head_family, kit):
    """Zero value rows make a group's heads write nothing (these families have no v bias
    in the tiny configs except qwen2, whose v bias is zeroed too): same as removing the group."""
    model = kit.make_model(head_family)
    adapter, original = ArchAdapter(model), shape_of(model.config)
    size = adapter.head_dim
    _, _, v = qkv_names(adapter.spec)
    removed = [i % original.kv_groups for i in range(original.layers)]
    for block, group in zip(adapter.blocks(), removed, strict=True):
        linear = get_path(block, v)
        weight_out_in(linear)[group * size : (group + 1) * size] = 0.0
        if linear.bias is not None:
            linear.bias.data[group * size : (group + 1) * size] = 0.0
    per = original.heads_per_group
    plan = kit.make_plan(
        original,
        groups=[[1 - g] for g in removed],
        heads=[list(range((1 - g) * per, (2 - g) * per)) for g in removed],
    )
    slim = build_slim_model(model, plan)
    assert (slim.config.num_key_value_heads, slim.config.num_attention_heads) == (1, per)
    ids = kit.tokens()
    assert torch.allclose(kit.logits(model, ids), kit.logits(slim, ids), **TOL)


def _cut_everything(model, kit):
    """A plan cutting every axis the family can express, choosing differently per layer."""
    original = shape_of(model.config)
    ffn = [[c for c in range(original.ffn) if (c + i) % 4] for i in range(3)]
    if model.config.model_type not in ("llama", "qwen2", "mistral"):
        return kit.make_plan(original, layers=[0, 2, 3], channels=ffn)
    # 2 groups of 2 heads: keep one group, and in it one head (different per layer).
    groups = [[0], [1], [1]]
    heads = [[1], [2], [3]]
    return kit.make_plan(original, layers=[0, 2, 3], channels=ffn, groups=groups, heads=heads)


def test_surgery_equals_masking_the_original(family, kit):
    model = kit.make_model(family)
    plan = _cut_everything(model, kit)
    slim = build_slim_model(model, plan)
    ids = kit.tokens()
    with masked(model, plan):
        expected = kit.logits(model, ids)
    assert torch.allclose(expected, kit.logits(slim, ids), **TOL)
    assert not torch.allclose(expected, kit.logits(model, ids), **TOL)  # the masks did cut


def test_shapes_and_config_agree(family, kit):
    model = kit.make_model(family)
    plan = _cut_everything(model, kit)
    slim = build_slim_model(model, plan)
    shape = shape_of(slim.config)
    assert shape == plan.shape
    adapter = ArchAdapter(slim)
    assert adapter.num_layers == shape.layers == len(plan.layers)
    hd = adapter.head_dim
    assert hd == ArchAdapter(model).head_dim  # the head size never changes
    for block in adapter.blocks():
        for name in adapter.spec.mlp_in:
            assert weight_out_in(get_path(block, name)).shape[0] == shape.ffn
        for name in adapter.spec.mlp_out:
            assert weight_out_in(get_path(block, name)).shape[1] == shape.ffn
        if adapter.spec.fused_qkv is None:
            q, k, v = (weight_out_in(get_path(block, n)) for n in qkv_names(adapter.spec))
            assert q.shape[0] == shape.heads * hd
            assert k.shape[0] == v.shape[0] == shape.kv_groups * hd
        out = weight_out_in(get_path(block, adapter.spec.attn_out[0]))
        assert out.shape[1] == shape.heads * hd
    layer_types = getattr(slim.config, "layer_types", None)
    if layer_types is not None:
        assert len(layer_types) == shape.layers


def test_per_layer_config_entries_follow_the_kept_layers(kit):
    model = kit.make_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention"] * 2
    config = slim_config(model.config, shape_of(model.config).__class__(2, 128, 2, 2), [1, 2])
    assert config.layer_types == ["sliding_attention", "full_attention"]


def test_stock_transformers_loads_and_generates_with_the_cache(family, kit, tmp_path):
    model = kit.make_model(family)
    slim = build_slim_model(model, _cut_everything(model, kit))
    slim.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(loaded) is type(model)
    ids = kit.tokens(1, 12)
    assert torch.allclose(kit.logits(slim, ids), kit.logits(loaded, ids), **TOL)
    settings = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False, "pad_token_id": 1}
    with torch.no_grad():
        cached = loaded.generate(ids, use_cache=True, **settings)
        uncached = loaded.generate(ids, use_cache=False, **settings)
    assert cached.shape[1] == ids.shape[1] + 10
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_dtype_is_kept(kit, dtype):
    model = kit.make_model("llama").to(dtype)
    slim = build_slim_model(model, _cut_everything(model, kit))
    assert {p.dtype for p in slim.parameters()} == {dtype}
