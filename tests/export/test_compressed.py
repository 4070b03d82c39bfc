"""compressed-tensors export: loads back through transformers + compressed-tensors unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from llmopt.errors import BadInput
from llmopt.export import export_compressed_tensors
from llmopt.models import load_model
from llmopt.quantize import QuantizeConfig, quantize_model
from llmopt.quantize.state import matrix

CALIB = {"calib_samples": 8, "calib_seq_len": 64}


def _quantized(tokenizer, name="tiny-llama", **settings):
    model = load_model(name)
    config = QuantizeConfig(**{"method": "gptq", "bits": 4, "group_size": 32, **CALIB, **settings})
    quantize_model(model, tokenizer, config, progress=False)
    return model


def _logits(model) -> torch.Tensor:
    ids = torch.randint(2, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "settings",
    [{"skip": r"layers\.0\.mlp\.down_proj"}, {"bits": 8, "group_size": None}],
)
def test_loads_back_through_transformers_exactly(settings, tiny_tokenizer, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model = _quantized(tiny_tokenizer, **settings)
    facts = export_compressed_tensors(model, tiny_tokenizer, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["quant_method"] == "compressed-tensors"
    skipped = "skip" in settings
    assert facts["compressed_layers"] == 28 - skipped
    assert ("model.layers.0.mlp.down_proj" in config["ignore"]) == skipped
    assert "lm_head" in config["ignore"]
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32)
    torch.testing.assert_close(_logits(back), _logits(model), rtol=0, atol=0)


def test_packed_sizes_and_asymmetric_zero_points(tiny_tokenizer, tmp_path):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    model = _quantized(tiny_tokenizer, symmetric=False)
    export_compressed_tensors(model, tiny_tokenizer, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme.model_validate(config["config_groups"]["group_0"])
    stored = load_file(str(tmp_path / "ct" / "model.safetensors"))
    name = "model.layers.2.mlp.up_proj"
    module = model.get_submodule(name)
    rows, cols = matrix(module).shape
    assert stored[f"{name}.weight_packed"].shape == (rows, cols // 8)  # 8 codes per int32
    assert stored[f"{name}.weight_zero_point"].shape == (rows // 8, cols // 32)
    parts = {k.rpartition(".")[2]: v for k, v in stored.items() if k.startswith(name + ".")}
    # dequantized at float32 (a float16 scale times a code is rounded at float16)
    parts["weight_scale"] = parts["weight_scale"].float()
    weight = PackedQuantizationCompressor.decompress(parts, scheme)["weight"]
    assert torch.equal(weight, matrix(module))


def test_refusals(tiny_tokenizer, tmp_path):
    with pytest.raises(BadInput, match=r"no quantized nn\.Linear"):
        export_compressed_tensors(load_model("tiny-llama"), tiny_tokenizer, tmp_path / "a")
    gpt2 = _quantized(tiny_tokenizer, name="tiny-gpt2", method="rtn")
    with pytest.raises(BadInput, match="Conv1D"):
        export_compressed_tensors(gpt2, tiny_tokenizer, tmp_path / "b")
    model = _quantized(tiny_tokenizer, method="rtn")
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(1.001)
    with pytest.raises(BadInput, match="left its 4-bit grid"):
        export_compressed_tensors(model, tiny_tokenizer, tmp_path / "c")
    assert not list(tmp_path.iterdir())
