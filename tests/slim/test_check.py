"""check_slim: every impossible request refused from config.json alone, in one line."""

from __future__ import annotations

import pytest

from llmopt.config import build
from llmopt.errors import BadInput
from llmopt.models.zoo import tiny_config
from llmopt.slim import SlimConfig, check_slim
from llmopt.slim.check import kept_channels, requested_shape
from llmopt.slim.shape import shape_of


def refused(hf_config, **values) -> str:
    with pytest.raises(BadInput) as err:
        check_slim(hf_config, build(SlimConfig, **values))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture
def llama():
    """4 layers, MLP 128, 2 KV groups of 2 query heads."""
    return tiny_config("llama")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"ffn": 1.0}, "ffn=1.0"),
        ({"ffn": -0.1}, "ffn=-0.1"),
        ({"heads": 1.5}, "heads=1.5"),
        ({"params": 1.0}, "params=1.0"),
        ({"params": 0.0}, "params=0.0"),
        ({"layers": -1}, "layers=-1"),
        ({"round_to": 0}, "round_to=0"),
        ({"ffn_score": "magnitude"}, "ffn_score='magnitude'"),
        ({"layer_sore": "influence"}, "layer_sore"),
    ],
)
def test_out_of_range_values_are_refused_by_the_config(values, named):
    with pytest.raises(BadInput, match=named):
        build(SlimConfig, **values)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"ffn": 0.9, "round_to": 64}, "--ffn 0.9"),  # 12.8 channels round to 0
        ({"ffn": 0.2, "round_to": 64}, "--ffn 0.2"),  # 102 round to all 128
        ({"heads": 0.9}, "--heads 0.9"),  # both heads of every group
        ({"heads": 0.1}, "--heads 0.1"),  # none of 2
        ({"kv_groups": 2}, "--kv-groups 2"),
        ({"layers": 4}, "--layers 4"),
        ({"params": 0.1}, "--params 0.1"),
        ({"params": 0.8, "ffn": 0.5}, "--params 0.8"),
        ({"heads": 0.5, "kv_groups": 1}, "--heads 0.5"),
        ({}, "nothing to remove"),
        ({"layers": 1, "calib_data": None}, "--calib-data none"),
        ({"layers": 1, "calib_seq_len": 1024}, "--calib-seq-len 1024"),
    ],
)
def test_impossible_requests_are_refused(llama, values, named):
    assert named in refused(llama, **values)


@pytest.mark.parametrize("family", ["gpt2", "opt", "gpt_neox"])
@pytest.mark.parametrize(("axis", "value"), [("heads", 0.5), ("kv_groups", 1)])
def test_fewer_heads_are_refused_where_the_config_cannot_express_them(family, axis, value):
    message = refused(tiny_config(family), **{axis: value})
    assert message.startswith("--" + axis.replace("_", "-"))
    assert "hidden_size / num_attention_heads" in message


def test_an_unknown_family_is_refused():
    from transformers import AutoConfig

    bert = AutoConfig.for_model("bert", hidden_size=64, num_attention_heads=4)
    assert "'bert'" in refused(bert, layers=1)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neox"])
def test_possible_requests_pass(family):
    config = tiny_config(family)
    check_slim(config, SlimConfig(ffn=0.5, layers=1))
    check_slim(config, SlimConfig(params=0.7, round_to=16))
    check_slim(config, SlimConfig(ffn=0.0, calib_data=None))  # removes nothing: no data needed


def test_requested_shape(llama):
    assert requested_shape(llama, SlimConfig(ffn=0.5, layers=1)) == shape_of(llama).__class__(
        layers=3, ffn=64, kv_groups=2, heads_per_group=2
    )
    assert requested_shape(llama, SlimConfig(heads=0.5)).heads_per_group == 1
    assert requested_shape(llama, SlimConfig(kv_groups=1)).kv_groups == 1


def test_heads_without_grouped_query_attention_remove_whole_groups():
    config = tiny_config("llama")
    config.num_key_value_heads = 4  # multi-head attention: every head is its own group
    shape = requested_shape(config, SlimConfig(heads=0.5))
    assert (shape.kv_groups, shape.heads_per_group) == (2, 1)


@pytest.mark.parametrize(
    ("width", "fraction", "multiple", "kept"),
    [(1536, 0.34, 64, 1024), (1536, 0.0, 64, 1536), (100, 0.0, 64, 100), (128, 0.5, 16, 64)],
)
def test_kept_channels_round_to_the_multiple(width, fraction, multiple, kept):
    assert kept_channels(width, fraction, multiple) == kept
