"""Optimizer groups, the schedule, MFU arithmetic, the LM objective's sum."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from llmopt.train.flops import flops_per_token, mfu
from llmopt.train.objective import LMObjective, count_label_tokens
from llmopt.train.optim import build_optimizer, lr_factor


def test_no_decay_for_norms_biases_embeddings(tiny_llama):
    opt = build_optimizer(tiny_llama, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    names = {id(p): n for n, p in tiny_llama.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    plain = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert "model.embed_tokens.weight" in plain
    assert all("norm" in n or "embed" in n for n in plain)
    assert all(n.endswith("proj.weight") or n == "lm_head.weight" for n in decayed)
    assert len(decayed) + len(plain) == len(set(names))


def test_warmup_then_cosine():
    f = [lr_factor(s, steps=10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[1:]))


def test_lm_objective_is_a_sum_over_label_tokens(tiny_llama):
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[1, 7:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        out = LMObjective()(tiny_llama, batch)
        mean = tiny_llama(input_ids=ids, labels=labels).loss  # HF: mean over the same positions
    n = int(count_label_tokens(batch))
    assert n == 11 + 6
    assert float(out.loss_sum) == pytest.approx(float(mean) * n, rel=1e-5)


def test_flops_and_mfu(tiny_llama):
    per_token = flops_per_token(tiny_llama, seq_len=64)
    cfg = tiny_llama.config
    n = sum(p.numel() for p in tiny_llama.parameters()) - cfg.vocab_size * cfg.hidden_size
    assert per_token == 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * 64
    assert mfu(1000.0, per_token, None, 1) is None  # CPU: unknown peak
    assert math.isclose(mfu(1000.0, 1e9, 1e13, 2), 0.05)
