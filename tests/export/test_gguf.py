"""GGUF export: every mapped family loads back through transformers with the source's logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from llmopt.errors import BadInput
from llmopt.export import export_gguf
from llmopt.export.gguf_quants import quantize_q4_k
from llmopt.models import load_model
from llmopt.models.zoo import tiny_config
from llmopt.quantize import QuantizeConfig, quantize_model

TEXT = "def f(x):\n    return x + 123  # done <|endoftext|> again"


def _random(family: str, **overrides):
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _model(kind: str):
    if kind in ("qwen2", "mistral"):
        return _random(kind)
    if kind == "slim-llama":  # fewer heads with an explicit head size, narrow MLP, 3 blocks
        return _random(
            "llama",
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=72,
            num_hidden_layers=3,
        )
    return load_model(f"tiny-{kind}")


def _load_back(path, model):
    from transformers import AutoModelForCausalLM

    # transformers reads GPT-2's context and MLP width from other GGUF keys than
    # llama.cpp writes (n_ctx, feed_forward_length); the keys are checked separately.
    config = model.config if model.config.model_type == "gpt2" else None
    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, config=config
    ).eval()


def _logits(model, ids=None) -> torch.Tensor:
    ids = (
        ids
        if ids is not None
        else torch.randint(2, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        return model(input_ids=ids).logits


def _fp16_rounded(model):
    """The source with every matrix rounded to float16 as the f16 file stores it."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.dim() == 2 and "wpe" not in name:
                p.copy_(p.half().float())
    return rounded


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2", "mistral", "slim-llama"])
def test_f16_loads_back_exact_to_fp16_rounding(kind, tiny_tokenizer, tmp_path):
    model = _model(kind)
    facts = export_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", "f16")
    assert facts["bytes"] == (tmp_path / "m.gguf").stat().st_size
    back = _load_back(tmp_path / "m.gguf", model)
    torch.testing.assert_close(_logits(back), _logits(_fp16_rounded(model)), rtol=0, atol=2e-5)


def test_metadata_and_tokenizer(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    gpt2 = load_model("tiny-gpt2")
    export_gguf(gpt2, tiny_tokenizer, tmp_path / "g.gguf", "f16")
    fields = GGUFReader(tmp_path / "g.gguf").fields
    assert fields["gpt2.feed_forward_length"].contents() == 128
    assert fields["gpt2.context_length"].contents() == 512
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert "output.weight" not in {t.name for t in GGUFReader(tmp_path / "g.gguf").tensors}
    slim = _model("slim-llama")
    export_gguf(slim, tiny_tokenizer, tmp_path / "s.gguf", "f16")
    fields = GGUFReader(tmp_path / "s.gguf").fields
    assert fields["llama.attention.key_length"].contents() == 16
    assert fields["llama.attention.head_count_kv"].contents() == 1
    assert fields["llama.feed_forward_length"].contents() == 72
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="s.gguf")
    assert back(TEXT)["input_ids"] == tiny_tokenizer(TEXT)["input_ids"]
    assert back.eos_token_id == tiny_tokenizer.eos_token_id


def _relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt() / b.square().mean().sqrt())


def test_quantized_types_within_their_tolerance(tiny_tokenizer, tmp_path):
    model = load_model("tiny-llama")
    source = _logits(model)
    errors = {}
    for qtype in ("f16", "q8_0", "q4_0", "q4_k"):
        facts = export_gguf(model, tiny_tokenizer, tmp_path / f"{qtype}.gguf", qtype)
        back = _load_back(tmp_path / f"{qtype}.gguf", model)
        errors[qtype] = _relative_rms(_logits(back), source)
        if qtype == "q4_k":  # 64-wide rows are no whole 256-blocks: q5_0, as llama.cpp falls back
            assert facts["tensor_types"] == {"Q5_0": 28, "Q8_0": 2, "F32": 9}
    assert errors["f16"] < 1e-3 < errors["q8_0"] < 0.02
    assert errors["q8_0"] < errors["q4_k"] < errors["q4_0"] < 0.3


def test_rows_that_fit_no_block_fall_back_to_f16(tiny_tokenizer, tmp_path):
    model = _model("slim-llama")  # down_proj rows of 72 values: no whole 32-blocks
    facts = export_gguf(model, tiny_tokenizer, tmp_path / "m.gguf", "q8_0")
    assert facts["tensor_types"] == {"Q8_0": 20, "F16": 3, "F32": 7}
    types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
    back = _load_back(tmp_path / "m.gguf", model)
    assert _relative_rms(_logits(back), _logits(model)) < 0.02


def test_q4_k_blocks_are_within_half_a_sub_block_step():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    x[0, :256] = np.abs(x[0, :256])  # a block with no negative value
    data = quantize_q4_k(x)
    back = quants.dequantize(data, GGMLQuantizationType.Q4_K)
    blocks = data.reshape(-1, 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    scales, _ = quants.Q4_K.get_scale_min(blocks[:, 4:16])
    step = (d * scales.astype(np.float32)).reshape(-1, 1)  # per 32-value sub-block
    err = np.abs(back - x).reshape(-1, 32)
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-7)
    spans = x.reshape(-1, 256)
    span = (spans.max(1) - np.minimum(spans.min(1), 0)).repeat(8)
    assert np.all(step.flatten() <= 1.05 * span / 15)


def test_a_quantized_model_is_copied_without_rounding_again(tiny_tokenizer, tmp_path):
    model = load_model("tiny-llama")
    config = QuantizeConfig(
        method="gptq",
        bits=4,
        group_size=32,
        embeddings=True,
        head=True,
        calib_samples=8,
        calib_seq_len=64,
    )
    quantize_model(model, tiny_tokenizer, config, progress=False)
    for qtype in ("q4_0", "q8_0"):
        facts = export_gguf(model, tiny_tokenizer, tmp_path / f"{qtype}.gguf", qtype)
        assert facts["exact_tensors"] == 30  # 28 linears, the embedding and the head
        back = _load_back(tmp_path / f"{qtype}.gguf", model)
        torch.testing.assert_close(_logits(back), _logits(model), rtol=0, atol=2e-5)


def test_refusals(tiny_tokenizer, tmp_path):
    for name in ("tiny-opt", "tiny-neox"):
        with pytest.raises(BadInput, match="has no GGUF mapping") as err:
            export_gguf(load_model(name), tiny_tokenizer, tmp_path / "x.gguf", "q8_0")
        assert "\n" not in str(err.value)
    llama = load_model("tiny-llama")
    with pytest.raises(BadInput, match="--type 'q3_k': unknown"):
        export_gguf(llama, tiny_tokenizer, tmp_path / "x.gguf", "q3_k")
    llama.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    with pytest.raises(BadInput, match="rope scaling 'llama3'"):
        export_gguf(llama, tiny_tokenizer, tmp_path / "x.gguf", "q8_0")
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
