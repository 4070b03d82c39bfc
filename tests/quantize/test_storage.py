"""The compact "quantized" format: bit-exact round trip, bytes as the bits say, hostile files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmopt.errors import BadInput
from llmopt.models import load_model
from llmopt.quantize import QuantizeConfig, quantize_model, storage
from llmopt.quantize.state import quantized_modules, state_of
from llmopt.quantize.storage import WEIGHTS_FILE, load_quantized_model, save_quantized_model

CALIB = {"calib_samples": 8, "calib_seq_len": 64}


def bits(t: torch.Tensor) -> torch.Tensor:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def assert_bit_exact(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(bits(sa[key]), bits(sb[key])), key


def _quantized(name: str, tokenizer, **settings):
    model = load_model(name)
    config = QuantizeConfig(**{"method": "gptq", "bits": 4, "group_size": 16, **CALIB, **settings})
    quantize_model(model, tokenizer, config, progress=False)
    return model


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("tiny-llama", {"symmetric": False}),
        ("tiny-llama", {"bits": 8, "pattern": "2:4"}),
        ("tiny-gpt2", {"embeddings": True, "group_size": None}),
    ],
)
def test_round_trip_is_bit_exact(name, settings, tiny_tokenizer, tmp_path):
    model = _quantized(name, tiny_tokenizer, **settings)
    facts = save_quantized_model(model, tmp_path / "a")
    back = load_quantized_model(tmp_path / "a")
    assert_bit_exact(model, back)
    before, after = quantized_modules(model), quantized_modules(back)
    assert set(before) == set(after)
    for key, module in before.items():
        a, b = state_of(module), state_of(after[key])
        assert a.describe() == b.describe()
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
    save_quantized_model(back, tmp_path / "b")
    first, second = (tmp_path / f / WEIGHTS_FILE for f in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()
    assert facts["sparse_tensors"] == (28 if "pattern" in settings else 0)


def _wide_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize(("symmetric", "ratio"), [(True, 0.5 + 2 / 128), (False, 0.5 + 3 / 128)])
def test_bytes_are_what_the_bits_promise(symmetric, ratio, tmp_path):
    model = _wide_llama()
    config = QuantizeConfig(method="rtn", bits=4, group_size=128, symmetric=symmetric)
    quantize_model(model, None, config, progress=False)
    facts = save_quantized_model(model, tmp_path)
    # bytes per weight: half a byte of code + a float16 scale (+ a uint8 zero) per 128
    assert facts["quantized_bytes"] * 4 == pytest.approx(ratio * facts["quantized_fp32_bytes"])
    assert facts["quantized_bytes"] / facts["quantized_fp32_bytes"] < 0.14
    state = model.state_dict()
    dense = sum(4 * t.numel() for k, t in state.items() if "layers" not in k or "norm" in k)
    size = (tmp_path / WEIGHTS_FILE).stat().st_size
    assert 0 < size - facts["quantized_bytes"] - dense < 32_000  # the JSON header


def test_sparse_codes_use_a_bitmask(tiny_tokenizer, tmp_path):
    model = _quantized("tiny-llama", tiny_tokenizer, pattern="2:4", group_size=32)
    sparse = save_quantized_model(model, tmp_path / "sparse")
    dense_model = _quantized("tiny-llama", tiny_tokenizer, group_size=32)
    dense = save_quantized_model(dense_model, tmp_path / "dense")
    # 2:4 at 4 bits: 1 mask bit + 2 bits of codes per weight instead of 4 bits
    assert sparse["quantized_bytes"] < 0.8 * dense["quantized_bytes"]


def test_weights_off_their_grid_are_refused(tiny_tokenizer, tmp_path):
    model = _quantized("tiny-llama", tiny_tokenizer)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(BadInput, match=r"layers\.1\.mlp\.up_proj\.weight: the weight left its"):
        save_quantized_model(model, tmp_path)
    with pytest.raises(BadInput, match="not quantized"):
        save_quantized_model(load_model("tiny-llama"), tmp_path)


@pytest.fixture
def saved(tiny_tokenizer, tmp_path) -> Path:
    model = _quantized("tiny-llama", tiny_tokenizer, method="rtn", symmetric=False)
    save_quantized_model(model, tmp_path / "q")
    return tmp_path / "q"


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if the loader gets as far as allocating the real model."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the real model was allocated before the file was checked")

    monkeypatch.setattr(storage, "empty_model", refuse)


def _rewrite(folder: Path, edit) -> None:
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    header = json.loads(meta["llmopt"])
    edit(tensors, header["layers"])
    save_file(tensors, str(path), metadata={"llmopt": json.dumps(header)})


KEY = "model.layers.0.mlp.down_proj.weight"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, layers: layers[KEY].update(shape=[1 << 30, 1 << 30]), "shape"),
        (lambda t, layers: layers[KEY].update(bits=3), "bits 3"),
        (lambda t, layers: layers[KEY].update(group_size=48), "group size 48"),
        (lambda t, layers: layers[KEY].update(sparse=True), "stored parts"),
        (lambda t, layers: t.update({KEY + "::codes": t[KEY + "::codes"][:-1]}), "::codes"),
        (lambda t, layers: t.update({KEY + "::scales": t[KEY + "::scales"].float()}), "::scales"),
        (lambda t, layers: t.pop("model.norm.weight"), "missing tensor 'model.norm.weight'"),
        (lambda t, layers: t.update(extra=torch.zeros(1)), "unexpected tensor 'extra'"),
        (lambda t, layers: layers.update({"lm_head.weight": layers[KEY]}), "lm_head.weight"),
    ],
)
def test_hostile_headers_are_refused_before_allocating(saved, no_allocation, edit, message):
    _rewrite(saved, edit)
    with pytest.raises(BadInput, match=message) as err:
        load_quantized_model(saved)
    assert "\n" not in str(err.value)


def test_a_config_that_disagrees_with_the_file_is_refused(saved, no_allocation):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "hidden_size": 1 << 16}))
    with pytest.raises(BadInput, match="shape"):
        load_quantized_model(saved)
    (saved / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    with pytest.raises(BadInput, match=r"blocks in config\.json"):
        load_quantized_model(saved)


def test_a_truncated_file_is_refused(saved):
    path = saved / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadInput, match="unreadable weights file"):
        load_quantized_model(saved)
