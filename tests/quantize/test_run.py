"""Quantizing whole tiny models: quality, kept and joint sparsity, checks, facts."""

from __future__ import annotations

import pytest
import torch

from llmopt.config import build
from llmopt.errors import BadInput
from llmopt.models import load_model
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.quantize import QuantizeConfig, check_quantize, is_quantized, quantize_model
from llmopt.quantize.state import current_codes, quantized_modules

CALIB = {"calib_samples": 8, "calib_seq_len": 64}


@pytest.fixture(scope="module")
def validation(tiny_tokenizer):
    from llmopt.data.corpus import load_corpus

    return load_corpus("pydoc", tiny_tokenizer, split="validation").ids


def _ppl(model, ids) -> float:
    from llmopt.evaluate.perplexity import evaluate_perplexity

    return evaluate_perplexity(model, ids, seq_len=128, max_tokens=4096, progress=False).perplexity


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_8bit_perplexity_within_one_percent(method, tiny_llama_dir, tiny_tokenizer, validation):
    model = load_model(tiny_llama_dir)
    before = _ppl(model, validation)
    config = QuantizeConfig(method=method, bits=8, group_size=32, **CALIB)
    facts = quantize_model(model, tiny_tokenizer, config, progress=False)
    after = _ppl(model, validation)
    assert abs(after / before - 1) < 0.01
    assert is_quantized(model)
    assert facts["quantized_modules"] == 4 * 7  # every decoder linear of 4 blocks
    layer = facts["layers"]["model.layers.0.self_attn.q_proj"]
    assert 0 < layer["weight_error"] < 1e-3
    assert ("output_error" in layer) == (method == "gptq")


def test_every_quantized_weight_is_on_its_grid(tiny_llama, tiny_tokenizer):
    config = QuantizeConfig(method="gptq", bits=4, group_size=16, symmetric=False, **CALIB)
    quantize_model(tiny_llama, tiny_tokenizer, config, progress=False)
    modules = quantized_modules(tiny_llama)
    assert len(modules) == 28
    for module in modules.values():
        codes = current_codes(module)
        assert codes is not None and int(codes.max()) <= 15


@torch.no_grad()
def test_gptq_4bit_beats_rtn_on_the_model(tiny_llama_dir, tiny_tokenizer):
    x = torch.randint(2, 500, (2, 64), generator=torch.Generator().manual_seed(0))
    reference = load_model(tiny_llama_dir)(input_ids=x).logits
    gaps = {}
    for method in ("rtn", "gptq"):
        model = load_model(tiny_llama_dir)
        config = QuantizeConfig(method=method, bits=4, group_size=32, **CALIB)
        quantize_model(model, tiny_tokenizer, config, progress=False)
        gaps[method] = float((model(input_ids=x).logits - reference).square().mean())
    # GPTQ minimises the layer output error on calibration data, not the weight error
    assert gaps["gptq"] < gaps["rtn"]


def _mask_2_4(model) -> dict[str, torch.Tensor]:
    masks = {}
    for name, module in ArchAdapter(model).all_linears().items():
        w = weight_out_in(module)
        groups = w.abs().reshape(w.shape[0], -1, 4)
        idx = groups.topk(2, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
        w.masked_fill_(mask.view_as(w), 0.0)
        masks[name] = w == 0
    return masks


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_a_sparse_model_stays_exactly_as_sparse(method, tiny_llama, tiny_tokenizer):
    with torch.no_grad():
        masks = _mask_2_4(tiny_llama)
    config = QuantizeConfig(method=method, bits=4, group_size=32, **CALIB)
    quantize_model(tiny_llama, tiny_tokenizer, config, progress=False)
    for name, module in ArchAdapter(tiny_llama).all_linears().items():
        w = weight_out_in(module)
        assert bool((w[masks[name]] == 0).all()), name


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gpt2"])
def test_joint_2_4_gptq_reaches_the_pattern(family, tiny_tokenizer):
    model = load_model(family)
    config = QuantizeConfig(method="gptq", bits=4, group_size=32, pattern="2:4", **CALIB)
    facts = quantize_model(model, tiny_tokenizer, config, progress=False)
    for name, module in ArchAdapter(model).all_linears().items():
        w = weight_out_in(module)
        zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert bool((zeros >= 2).all()), name
    assert facts["sparsity"] >= 0.5 and facts["joint_pattern"] == "2:4"


def test_joint_unstructured_reaches_the_sparsity(tiny_llama, tiny_tokenizer):
    config = QuantizeConfig(method="gptq", bits=8, group_size=32, sparsity=0.5, **CALIB)
    quantize_model(tiny_llama, tiny_tokenizer, config, progress=False)
    for name, module in ArchAdapter(tiny_llama).all_linears().items():
        w = weight_out_in(module)
        zeros = int((w == 0).sum())
        # exactly half pruned; an 8-bit kept weight rounds to zero only when tiny
        assert w.numel() // 2 <= zeros <= w.numel() // 2 + w.numel() // 200, name


def test_embeddings_and_tied_head(tiny_tokenizer):
    model = load_model("tiny-gpt2")  # its head is tied to the embedding
    config = QuantizeConfig(method="rtn", bits=8, group_size=32, embeddings=True)
    facts = quantize_model(model, tiny_tokenizer, config, progress=False)
    adapter = ArchAdapter(model)
    assert facts["layers"]["head"] == {"tied": True}
    assert current_codes(adapter.head()) is not None
    assert current_codes(adapter.embedding()) is not None


def test_bad_input_is_refused_with_one_line(tiny_llama):
    with pytest.raises(BadInput, match="bits=3") as err:
        build(QuantizeConfig, method="rtn", bits=3)
    assert "\n" not in str(err.value)
    cases = [
        ({"group_size": 48}, r"--group-size 48: does not divide the input width 64 .*\(32 divides"),
        ({"sparsity": 0.5}, "joint pruning needs --method gptq"),
        ({"act_order": True}, "--act-order: only for --method gptq"),
        ({"skip": "."}, "no decoder linear is left"),
        ({"targets": "("}, "--targets '\\(': not a regular expression"),
    ]
    for extra, message in cases:
        config = QuantizeConfig(method="rtn", bits=4, **{"group_size": 32, **extra})
        with pytest.raises(BadInput, match=message) as err:
            check_quantize(tiny_llama.config, config)
        assert "\n" not in str(err.value)
    gptq = QuantizeConfig(method="gptq", bits=4, group_size=32, pattern="2:4", act_order=True)
    with pytest.raises(BadInput, match="N:M"):
        check_quantize(tiny_llama.config, gptq)
    with pytest.raises(BadInput, match="--pattern '3:2'"):
        check_quantize(tiny_llama.config, QuantizeConfig(method="gptq", bits=4, pattern="3:2"))
    per_channel = build(QuantizeConfig, method="rtn", bits=4, group_size=-1)
    assert per_channel.group_size is None
    check_quantize(tiny_llama.config, per_channel)
