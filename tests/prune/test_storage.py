"""Sparse checkpoints: smaller on disk, bit-exact round trip, loaded by llmopt's loader."""

from __future__ import annotations

import torch

from llmopt import load_model
from llmopt.evaluate.footprint import checkpoint_bytes
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.models.zoo import tiny_config
from llmopt.provenance import StageRecord, write_record
from llmopt.prune import PruneConfig, prune_model
from llmopt.prune.storage import decode, encode, save_sparse_model


def bits(t: torch.Tensor) -> torch.Tensor:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def assert_bit_exact(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(bits(sa[key]), bits(sb[key])), key


def test_encode_keeps_negative_zero_and_dtype():
    t = torch.tensor([[0.0, -0.0, 1.5, 0.0], [0.0, 0.0, 0.0, -2.0]], dtype=torch.bfloat16)
    t = t.repeat(8, 8)
    parts = encode(t)
    assert parts is not None
    back = decode(parts["::bitmask"], parts["::values"], list(t.shape))
    assert back.dtype == torch.bfloat16 and torch.equal(bits(back), bits(t))
    assert encode(torch.randn(64, 64)) is None  # dense: stored as it is


def _save(model, folder):
    save_sparse_model(model, folder)
    write_record(folder, StageRecord(stage="prune", source="test", format="sparse"))


def test_round_trip_is_bit_exact_and_smaller(tiny_llama, tmp_path):
    prune_model(tiny_llama, None, PruneConfig(method="magnitude", sparsity=0.5))
    weight = first_linear_weight(tiny_llama)
    weight[0, 0] = -0.0  # a negative zero must come back as one
    _save(tiny_llama, tmp_path / "sparse")
    tiny_llama.save_pretrained(tmp_path / "dense")
    loaded = load_model(tmp_path / "sparse")  # through FORMAT_LOADERS["sparse"]
    assert_bit_exact(tiny_llama, loaded)
    ids = torch.randint(0, 500, (2, 16))
    with torch.no_grad():  # non-persistent buffers (rotary tables) are rebuilt too
        assert torch.equal(tiny_llama(ids).logits, loaded(ids).logits)
    sparse = checkpoint_bytes(tmp_path / "sparse")["weight_bytes"]
    dense = checkpoint_bytes(tmp_path / "dense")["weight_bytes"]
    # block linears are most of tiny-llama; at 50% they cost 17/32 of dense
    assert sparse < 0.85 * dense


def first_linear_weight(model) -> torch.Tensor:
    return weight_out_in(next(iter(ArchAdapter(model).all_linears().values())))


def test_tied_embeddings_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config).eval()
    prune_model(model, None, PruneConfig(method="magnitude", pattern="2:4"))
    _save(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert_bit_exact(model, loaded)


def test_gpt2_conv1d_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("gpt2")).eval()
    prune_model(model, None, PruneConfig(method="magnitude", pattern="4:8"))
    _save(model, tmp_path)
    assert_bit_exact(model, load_model(tmp_path))
