"""slim_model end to end: the shape asked for, the facts, the --params choice, every family."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmopt.calibrate import load_calibration
from llmopt.errors import BadInput
from llmopt.evaluate import model_footprint
from llmopt.slim import SlimConfig, slim_model
from llmopt.slim.check import requested_shape
from llmopt.slim.probes import probe_batches
from llmopt.slim.shape import shape_of

SMALL = {"calib_samples": 8, "calib_seq_len": 64, "calib_batch_size": 4, "score_tokens": 256}


@pytest.mark.parametrize(
    "request_",
    [{"ffn": 0.5}, {"kv_groups": 1}, {"heads": 0.5}, {"layers": 2}, {"ffn": 0.25, "layers": 1}],
)
def test_single_axis_requests(tiny_llama, tiny_tokenizer, request_):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    config = SlimConfig(**request_, round_to=16, **SMALL)
    slim, facts = slim_model(tiny_llama, tiny_tokenizer, config, progress=False)
    assert shape_of(slim.config) == requested_shape(tiny_llama.config, config)
    assert facts["shape_after"] == shape_of(slim.config).as_dict()
    assert facts["params_after"] == model_footprint(slim).unique_params
    assert facts["params_before"] == model_footprint(tiny_llama).unique_params
    assert len(facts["removed"]["layers"]) == request_.get("layers", 0)
    json.dumps(facts)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())


def test_removed_groups_and_layers_are_the_least_important(tiny_llama, tiny_tokenizer):
    config = SlimConfig(kv_groups=1, layers=1, **SMALL)
    _, facts = slim_model(tiny_llama, tiny_tokenizer, config, progress=False)
    influence = facts["scores"]["layers"]["values"]
    assert facts["removed"]["layers"] == [min(range(4), key=influence.__getitem__)]
    heads = facts["scores"]["heads"]["values"]
    for layer, groups in facts["removed"]["kv_groups"].items():
        sums = [sum(heads[int(layer)][2 * g : 2 * g + 2]) for g in range(2)]
        assert groups == [min(range(2), key=sums.__getitem__)]


def _kl(original, slim, batches) -> float:
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            p = F.log_softmax(original(input_ids=batch).logits.float(), -1).flatten(0, 1)
            q = F.log_softmax(slim(input_ids=batch).logits.float(), -1).flatten(0, 1)
            total += float(F.kl_div(q, p, log_target=True, reduction="sum"))
            tokens += p.shape[0]
    return total / tokens


def test_params_chooses_the_lowest_kl_candidate_and_builds_it(tiny_llama, tiny_tokenizer):
    config = SlimConfig(params=0.7, round_to=16, **SMALL)
    slim, facts = slim_model(tiny_llama, tiny_tokenizer, config, progress=False)
    candidates = facts["candidates"]
    assert len(candidates) >= 4
    assert all(c["params"] <= 0.7 * facts["params_before"] for c in candidates)
    finalists = [c for c in candidates if c["kl"] is not None]
    assert len(finalists) == 3
    best = min(finalists, key=lambda c: c["kl"])
    # the finalists are the best of the screen
    cut = sorted(c["kl_screen"] for c in candidates)[2]
    assert all(c["kl_screen"] <= cut for c in finalists)
    assert facts["shape_after"] == best["shape"]
    assert (
        facts["params_after"] == model_footprint(slim).unique_params <= 0.7 * facts["params_before"]
    )
    assert "lowest KL" in facts["choice"]
    # The KL the chooser measured with masks is the built model's KL.
    ids = load_calibration(config, tiny_tokenizer, tiny_llama, None, progress=False).ids
    measured = _kl(tiny_llama, slim, probe_batches(ids, config.score_tokens))
    assert measured == pytest.approx(best["kl"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize(
    "metrics", [("taylor", "taylor", "perplexity"), ("weighted", "output", "influence")]
)
def test_every_metric_runs_through_slim_model(tiny_llama, tiny_tokenizer, metrics):
    ffn, head, layer = metrics
    settings = {**SMALL, "score_tokens": 128}
    config = SlimConfig(
        ffn=0.5,
        kv_groups=1,
        layers=1,
        ffn_score=ffn,
        head_score=head,
        layer_score=layer,
        **settings,
    )
    slim, facts = slim_model(tiny_llama, tiny_tokenizer, config, progress=False)
    assert {k: v["metric"] for k, v in facts["scores"].items()} == {
        "ffn": ffn,
        "heads": head,
        "layers": layer,
    }
    assert shape_of(slim.config).layers == 3


def test_removing_nothing_needs_no_data_and_changes_nothing(tiny_llama, tiny_tokenizer, kit):
    config = SlimConfig(ffn=0.0, layers=0, calib_data=None)
    slim, facts = slim_model(tiny_llama, tiny_tokenizer, config, progress=False)
    assert facts["params_kept"] == 1.0 and facts["scores"] == {}
    ids = kit.tokens()
    assert torch.equal(kit.logits(tiny_llama, ids), kit.logits(slim, ids))


def test_an_impossible_request_is_refused_before_any_work(tiny_llama, tiny_tokenizer):
    with pytest.raises(BadInput, match="--layers 4"):
        slim_model(tiny_llama, tiny_tokenizer, SlimConfig(layers=4), progress=False)


def test_every_family_slims_and_reloads(family, kit, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = kit.make_model(family)
    heads = {"kv_groups": 1} if family in ("llama", "qwen2", "mistral") else {}
    config = SlimConfig(ffn=0.5, layers=1, round_to=16, **heads, **SMALL)
    slim, _ = slim_model(model, tiny_tokenizer, config, progress=False)
    slim.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False)
    ids = kit.tokens()
    assert torch.allclose(kit.logits(slim, ids), kit.logits(loaded, ids), atol=1e-6)
