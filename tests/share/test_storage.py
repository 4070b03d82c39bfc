"""Saving and loading shared models: dense and shared layouts, llmopt and plain transformers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmopt import load_model
from llmopt.errors import BadInput
from llmopt.evaluate import checkpoint_bytes, model_footprint
from llmopt.models.arch import ArchAdapter
from llmopt.provenance import StageRecord, write_record
from llmopt.share.apply import layout_of, share_layers, tie_embeddings
from llmopt.share.plan import make_plan
from llmopt.share.storage import SHARED_WEIGHTS, save_shared


def _save(model, folder, save_format):
    """Write the folder as a stage would (weights, then llmopt.json with the format)."""
    folder.mkdir()
    fmt, _facts = save_shared(model, folder, save_format)
    write_record(folder, StageRecord(stage="share", source="x", format=fmt))
    return fmt


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_dense_round_trip_with_llmopt_and_plain_transformers(tiny_model, tokens, tmp_path):
    share_layers(tiny_model, make_plan(4, 2, "cycle"))
    expected = _logits(tiny_model, tokens)
    assert _save(tiny_model, tmp_path / "d", "dense") == "shared"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    assert torch.equal(_logits(plain, tokens), expected)
    restored = load_model(tmp_path / "d")
    assert torch.equal(_logits(restored, tokens), expected)
    assert layout_of(restored).plan.block_of == (0, 1, 0, 1)
    assert model_footprint(restored).unique_params == model_footprint(tiny_model).unique_params
    assert ArchAdapter(restored).blocks()[0].get_parameter(
        ArchAdapter(restored).linear_names()[0] + ".weight"
    ) is ArchAdapter(restored).blocks()[2].get_parameter(
        ArchAdapter(restored).linear_names()[0] + ".weight"
    )


def test_shared_layout_is_smaller_by_the_expected_ratio_and_exact(tiny_model, tokens, tmp_path):
    share_layers(tiny_model, make_plan(4, 1, "cycle"))
    expected = _logits(tiny_model, tokens)
    fp = model_footprint(tiny_model)
    _save(tiny_model, tmp_path / "dense", "dense")
    _save(tiny_model, tmp_path / "shared", "shared")
    dense = checkpoint_bytes(tmp_path / "dense")["weight_bytes"]
    shared = checkpoint_bytes(tmp_path / "shared")["weight_bytes"]
    # Dense stores every use of a block (the tied head once); shared stores unique storage.
    dense_params = fp.unique_params + 3 * sum(
        p.numel() for p in ArchAdapter(tiny_model).blocks()[0].parameters()
    )
    assert shared / dense == pytest.approx(fp.unique_params / dense_params, rel=0.01)
    restored = load_model(tmp_path / "shared")
    assert torch.equal(_logits(restored, tokens), expected)
    assert model_footprint(restored).unique_params == fp.unique_params
    record = json.loads((tmp_path / "shared" / "llmopt.json").read_text())
    assert record["format"] == "shared"


def test_relaxed_model_round_trips(tiny_llama, tokens, tmp_path):
    share_layers(tiny_llama, make_plan(4, 2, "sequence"), init="first", lora_rank=3)
    expected = _logits(tiny_llama, tokens)
    assert _save(tiny_llama, tmp_path / "s", "shared") == "shared"
    restored = load_model(tmp_path / "s")
    assert torch.equal(_logits(restored, tokens), expected)
    assert model_footprint(restored).unique_params == model_footprint(tiny_llama).unique_params
    # Dense means merged per-layer weights: an ordinary model, loaded as one.
    assert _save(tiny_llama, tmp_path / "d", "dense") == "dense"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    torch.testing.assert_close(_logits(plain, tokens), expected, rtol=1e-5, atol=1e-5)
    assert "llmopt_sharing" not in json.loads((tmp_path / "d" / "config.json").read_text())
    assert layout_of(load_model(tmp_path / "d")) is None


def test_tied_embeddings_survive_saving(tiny_llama, tokens, tmp_path):
    tie_embeddings(tiny_llama)
    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    expected = _logits(tiny_llama, tokens)
    _save(tiny_llama, tmp_path / "d", "dense")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    assert torch.equal(_logits(plain, tokens), expected)
    _save(tiny_llama, tmp_path / "s", "shared")
    restored = load_model(tmp_path / "s")
    assert torch.equal(_logits(restored, tokens), expected)


def test_plain_transformers_refuses_the_shared_layout_instead_of_guessing(tiny_llama, tmp_path):
    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    _save(tiny_llama, tmp_path / "s", "shared")
    assert (tmp_path / "s" / SHARED_WEIGHTS).is_file()
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path / "s")


def test_diverged_dense_copies_are_not_silently_retied(tiny_llama, tmp_path):
    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    _save(tiny_llama, tmp_path / "d", "dense")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    with torch.no_grad():
        plain.model.layers[2].mlp.up_proj.weight.add_(1.0)
    plain.save_pretrained(tmp_path / "d", safe_serialization=True)
    with pytest.raises(BadInput, match="layer 2"):
        load_model(tmp_path / "d")


def test_corrupt_shared_weights_are_reported(tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    _save(tiny_llama, tmp_path / "s", "shared")
    state = load_file(tmp_path / "s" / SHARED_WEIGHTS)
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, tmp_path / "s" / SHARED_WEIGHTS)
    with pytest.raises(BadInput, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(tmp_path / "s")


def test_unshared_models_are_refused(tiny_llama, tmp_path):
    with pytest.raises(BadInput, match="not shared"):
        _save(tiny_llama, tmp_path / "x", "dense")
    share_layers(tiny_llama, make_plan(4, 2, "cycle"))
    with pytest.raises(BadInput, match="--save-format 'sparse'"):
        _save(tiny_llama, tmp_path / "y", "sparse")
