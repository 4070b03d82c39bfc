"""`llmopt distill` end to end on tiny models: outputs, refusals, cache, accumulation, masks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmopt import load_model
from llmopt.distill.student import drop_every_other_layer
from llmopt.models import load_tokenizer

# fp32: the accumulation and multi-process comparisons below are exact only there
# (the default, auto, is bf16 on a CPU with native bf16).
FAST = ("--seq-len", "32", "--no-progress", "--no-eval", "--warmup", "0", "--log-every", "1",
        "--precision", "fp32")  # fmt: skip


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_llama_dir):
    """tiny-llama with every other layer removed (2 of 4 blocks), saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("student") / "half"
    drop_every_other_layer(load_model(tiny_llama_dir)).save_pretrained(folder)
    load_tokenizer(tiny_llama_dir).save_pretrained(folder)
    return folder


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_distill_writes_a_plain_student_with_its_record(cli, tmp_path, student_dir):
    out = tmp_path / "out"
    r = cli(
        "distill", student_dir, "--teacher", "tiny-llama", "-o", out, "--steps", "3",
        "--micro-batch-size", "2", "--loss", "jsd", "--beta", "0.3", "--hidden-loss", "mse",
        "--layer-map", "0:1,1:3", "--seq-len", "32", "--no-progress", "--eval-max-tokens", "600",
        "--log-every", "1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "teacher perplexity" in r.out and "perplexity " in r.out
    record = json.loads((out / "llmopt.json").read_text())
    m = record["metrics"]
    assert record["stage"] == "distill" and m["distill"]["teacher"] == "tiny-llama"
    assert m["distill"]["layer_map"] == [[0, 1], [1, 3]] and m["distill"]["beta"] == 0.3
    assert m["teacher"]["perplexity"] > 1 and m["before"]["perplexity"] > 1
    assert m["after"]["perplexity"] > 1
    assert [row["step"] for row in m["distill"]["curve"]] == [1, 2, 3]
    assert all({"kd", "ce", "hidden"} <= set(row) for row in m["distill"]["curve"])
    # A plain Hugging Face checkpoint of the student alone: no projection, 2 blocks.
    weights = _weights(out)
    assert not any("proj" in k and "layers" not in k for k in weights)
    assert not any(k.startswith("model.layers.2") for k in weights)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


def test_vocabulary_mismatch_is_exit_2_and_writes_nothing(cli, tmp_path, student_dir):
    other = tmp_path / "other-vocab"
    load_model(student_dir).save_pretrained(other)
    tok = load_tokenizer(student_dir)
    tok.add_tokens(["<brand-new-token>"])
    tok.save_pretrained(other)
    out = tmp_path / "out"
    r = cli("distill", other, "--teacher", "tiny-llama", "-o", out, "--steps", "1", *FAST)
    assert r.code == 2
    assert "tokenizers differ" in r.err and "<brand-new-token>" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--temperature", "0"), "--temperature 0"),
        (("--alpha", "1.5"), "--alpha 1.5"),
        (("--layer-map", "0:1"), "--layer-map needs --hidden-loss"),
        (("--hidden-loss", "mse", "--layer-map", "0:9"), "the teacher has 4 layers"),
    ],
)
def test_bad_distill_values_are_exit_2(cli, tmp_path, student_dir, flags, message):
    r = cli("distill", student_dir, "--teacher", "tiny-llama", "-o", tmp_path / "o", *FAST, *flags)
    assert r.code == 2 and message in r.err, r.err
    assert not (tmp_path / "o").exists()


def test_cache_then_train_from_it_without_the_teacher(cli, tmp_path, student_dir, monkeypatch):
    cache = tmp_path / "cache"
    common = ("--steps", "2", "--micro-batch-size", "2", "--cache-k", "16", *FAST)
    r = cli("distill", student_dir, "--teacher", "tiny-llama", "--cache-teacher", cache,
            "-o", tmp_path / "a", *common)  # fmt: skip
    assert r.code == 0, r.err
    meta = json.loads((cache / "meta.json").read_text())
    # Only the rows the run visits (2 steps x 2 rows) are stored, not the whole corpus.
    assert meta["k"] == 16 and meta["cached_rows"] == 4 and meta["rows"] > 100
    assert meta["tokens"] == 4 * 31
    shard_bytes = sum(p.stat().st_size for p in cache.glob("*.safetensors"))
    # 16 ids (int32) + 16 log-probs (fp16) + the remainder (fp32) per position, plus headers.
    assert 100 * meta["tokens"] < shard_bytes < 110 * meta["tokens"]

    import llmopt.distill.stage as stage

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher must not be loaded when the cache exists")

    monkeypatch.setattr(stage, "_load_teacher", no_teacher)
    r = cli("distill", student_dir, "--cache-teacher", cache, "-o", tmp_path / "b", *common)
    assert r.code == 0, r.err
    info = json.loads((tmp_path / "b" / "llmopt.json").read_text())["metrics"]["distill"]
    assert info["source"] == "cache" and info["teacher"] == "tiny-llama"
    # A longer run than the cache was made for, or another temperature: refused up front.
    r = cli("distill", student_dir, "--cache-teacher", cache, "-o", tmp_path / "c",
            *common, "--steps", "50")  # fmt: skip
    assert r.code == 2 and "holds 4 of the" in r.err
    r = cli("distill", student_dir, "--cache-teacher", cache, "-o", tmp_path / "c", *common,
            "--temperature", "1.0")  # fmt: skip
    assert r.code == 2 and "temperature 2.0, not 1.0" in r.err


def _distil(cli, out, student_dir, *flags):
    r = cli(
        "distill", student_dir, "--teacher", "tiny-llama", "-o", out, "--steps", "2",
        "--alpha", "0.7", "--loss", "reverse-kl", "--hidden-loss", "cosine", *FAST, *flags,
    )  # fmt: skip
    assert r.code == 0, r.err
    return _weights(out)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5, msg=k)


def test_gradient_accumulation_matches_one_big_batch(cli, tmp_path, narrow_student_dir):
    # A narrow student, so the hidden-state projections train through accumulation too.
    student = narrow_student_dir
    whole = _distil(cli, tmp_path / "whole", student, "--micro-batch-size", "4")
    accum = _distil(
        cli, tmp_path / "accum", student, "--micro-batch-size", "1", "--grad-accum", "4"
    )
    _assert_same(whole, accum)
    start = _weights(student)
    assert any(not torch.equal(start[k], whole[k]) for k in start)  # it did train


@pytest.fixture(scope="module")
def narrow_student_dir(tmp_path_factory, tiny_llama_dir):
    """A 2-layer tiny Llama of width 32 (the teacher's is 64): hidden states need projections."""
    from transformers import AutoModelForCausalLM

    from llmopt.models.zoo import tiny_config

    config = tiny_config("llama", layers=2)
    config.hidden_size = 32
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("student") / "narrow"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    load_tokenizer(tiny_llama_dir).save_pretrained(folder)
    return folder


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["ddp-projections", "fsdp"])
def test_two_gloo_processes_match_one_process(cli, tmp_path, student_dir, narrow_student_dir, mode):
    student = narrow_student_dir if mode == "ddp-projections" else student_dir
    extra = ("--fsdp",) if mode == "fsdp" else ()
    one = _distil(cli, tmp_path / "one", student, "--micro-batch-size", "4")
    two = _distil(cli, tmp_path / "two", student, "--micro-batch-size", "2", "--nproc", "2", *extra)
    _assert_same(one, two)


def test_pruned_student_keeps_its_exact_sparsity(cli, tmp_path, student_dir):
    from llmopt.models.arch import ArchAdapter, weight_out_in

    model = load_model(student_dir)
    masks = {}
    for name, linear in ArchAdapter(model).all_linears().items():
        w = weight_out_in(linear)
        w[w.abs() < w.abs().median()] = 0.0  # half of every block linear
        masks[f"{name}.weight"] = w == 0
    pruned = tmp_path / "pruned"
    model.save_pretrained(pruned)
    load_tokenizer(student_dir).save_pretrained(pruned)
    out = tmp_path / "out"
    r = cli("distill", pruned, "--teacher", "tiny-llama", "-o", out, "--steps", "2",
            "--micro-batch-size", "2", "--keep-masks", "--lr", "1e-2", *FAST)  # fmt: skip
    assert r.code == 0, r.err
    after = _weights(out)
    for key, mask in masks.items():
        assert torch.equal(after[key] == 0, mask), key
    assert any(not torch.equal(after[k], _weights(pruned)[k]) for k in masks)
