"""The online objective, the offline top-k cache and the vocabulary check."""

from __future__ import annotations

import math

import pytest
import torch

from llmopt import load_model
from llmopt.distill.hidden import HiddenStateLoss, default_layer_map, parse_layer_map
from llmopt.distill.losses import LossSpec, distillation_loss
from llmopt.distill.objective import DistillObjective
from llmopt.distill.student import drop_every_other_layer
from llmopt.distill.teacher import (
    build_teacher_cache,
    freeze_teacher,
    open_cache_for,
    read_cache_meta,
    visited_rows,
)
from llmopt.distill.vocab import shared_vocab_size, vocabulary_fingerprint
from llmopt.errors import BadInput
from llmopt.train.data import Layout, RowSource
from llmopt.train.objective import count_label_tokens

V = 512


def _rows(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Different lengths, as with --no-pack: the cache must keep rows apart.
    return [torch.randint(2, V, (10 + 3 * (i % 3),), generator=gen) for i in range(n)]


def _batch(rows: list[torch.Tensor], index: list[int]) -> dict[str, torch.Tensor]:
    longest = max(rows[i].numel() for i in index)
    ids = torch.ones((len(index), longest), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for j, i in enumerate(index):
        ids[j, : rows[i].numel()] = rows[i]
        mask[j, : rows[i].numel()] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": ids.masked_fill(mask == 0, -100),
        "index": torch.tensor(index),
    }


@pytest.fixture
def pair(tiny_llama_dir):
    teacher = freeze_teacher(load_model(tiny_llama_dir), torch.device("cpu"), None)
    student = drop_every_other_layer(load_model(tiny_llama_dir)).train()
    return teacher, student


def test_online_objective_is_the_shifted_loss_over_label_tokens(pair):
    teacher, student = pair
    rows = _rows()
    batch = _batch(rows, [0, 1, 2])
    spec = LossSpec(divergence="jsd", beta=0.3, temperature=2.0, alpha=0.6)
    out = DistillObjective(spec, V, teacher=teacher)(student, batch)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = distillation_loss(s[:, :-1], t[:, :-1], batch["labels"][:, 1:], spec)
    assert out.loss_sum.item() == pytest.approx(ref.total.item(), rel=1e-5)
    assert float(out.metrics["kd"]) == pytest.approx(ref.kd.item(), rel=1e-5)
    assert ref.tokens == int(count_label_tokens(batch))
    out.loss_sum.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.model.layers[0].mlp.up_proj.weight.grad is not None


def test_teacher_is_frozen_in_eval_mode_and_training_dtype(tiny_llama_dir):
    teacher = freeze_teacher(
        load_model(tiny_llama_dir).train(), torch.device("cpu"), torch.bfloat16
    )
    assert not teacher.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in teacher.parameters())


def _cache(tmp_path, teacher, rows, tokenizer, k, temperature=1.0):
    dest = tmp_path / f"cache-k{k}"
    dest.mkdir()
    build_teacher_cache(
        teacher,
        rows,
        dest,
        teacher_name="tiny-llama",
        k=k,
        temperature=temperature,
        vocab_size=V,
        vocab_fingerprint=vocabulary_fingerprint(tokenizer),
        pad_id=1,
        batch_size=4,
        rows_per_shard=4,  # several shards, a batch straddles them
        progress=False,
    )
    return open_cache_for(dest, rows, temperature, vocabulary_fingerprint(tokenizer))


def test_cached_topk_reproduces_the_online_loss(tmp_path, pair, tiny_tokenizer):
    teacher, student = pair
    rows = _rows()
    batch = _batch(rows, [5, 0, 3, 4])  # shuffled, like the trainer's permutation
    spec = LossSpec(divergence="kl", temperature=1.0)
    online = DistillObjective(spec, V, teacher=teacher)(student, batch).metrics["kd"].item()

    # k = V - 1: the remainder bucket is a single token, so only fp16 rounding is lost.
    full = _cache(tmp_path, teacher, rows, tiny_tokenizer, k=V - 1)
    exact = DistillObjective(spec, V, cache=full)(student, batch).metrics["kd"].item()
    assert exact == pytest.approx(online, rel=2e-3)

    # k = 32: the loss misses exactly the divergence inside the bucket, weighted by its mass.
    small = _cache(tmp_path, teacher, rows, tiny_tokenizer, k=32)
    cached = DistillObjective(spec, V, cache=small)(student, batch).metrics["kd"].item()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        log_p = torch.log_softmax(teacher(**inputs).logits[:, :-1].double(), -1)
        log_q = torch.log_softmax(student(**inputs).logits[:, :-1].double(), -1)
    top_ids = log_p.topk(32, -1).indices
    tail = torch.ones_like(log_p, dtype=torch.bool).scatter(-1, top_ids, False)
    lp = log_p.masked_fill(~tail, -math.inf)
    lq = log_q.masked_fill(~tail, -math.inf)
    mass = torch.logsumexp(lp, -1).exp()
    lp_n = lp - torch.logsumexp(lp, -1, keepdim=True)
    lq_n = lq - torch.logsumexp(lq, -1, keepdim=True)
    within = torch.where(tail, lp_n.exp() * (lp_n - lq_n), 0.0).sum(-1)
    gap = (mass * within * (batch["labels"][:, 1:] != -100)).sum().item()
    assert online - cached == pytest.approx(gap, rel=0.05, abs=2e-3 * online)


def test_cache_refuses_other_rows_and_temperature(tmp_path, pair, tiny_tokenizer):
    teacher, _ = pair
    rows = _rows()
    cache = _cache(tmp_path, teacher, rows, tiny_tokenizer, k=8)
    fp = vocabulary_fingerprint(tiny_tokenizer)
    meta = read_cache_meta(cache.folder)
    assert meta.rows == len(rows) and meta.tokens == sum(r.numel() - 1 for r in rows)
    assert len(meta.shards) == 2
    with torch.no_grad():
        logits = teacher(torch.stack(rows[0::3])).logits[:, :-1]  # the rows of length 10
    outside = 1 - torch.softmax(logits, -1).topk(8, -1).values.sum(-1).mean().item()
    assert 0 < meta.mass_outside_topk < 1
    assert meta.mass_outside_topk == pytest.approx(outside, rel=0.1)  # a subset vs all rows
    with pytest.raises(BadInput, match="other training rows"):
        open_cache_for(cache.folder, _rows(seed=1), 1.0, fp)
    with pytest.raises(BadInput, match=r"temperature 1\.0, not 2\.0"):
        open_cache_for(cache.folder, rows, 2.0, fp)
    with pytest.raises(BadInput, match="another vocabulary"):
        open_cache_for(cache.folder, rows, 1.0, "0123")


class _FakeTokenizer:
    def __init__(self, vocab: dict[str, int]):
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_vocabulary_mismatch_is_refused_even_at_equal_size(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[10:12]
    swapped = {**vocab, a: vocab[b], b: vocab[a]}
    with pytest.raises(BadInput, match="tokenizers differ"):
        shared_vocab_size(_FakeTokenizer(swapped), tiny_tokenizer, V, V)
    with pytest.raises(BadInput, match="only in the student"):
        shared_vocab_size(_FakeTokenizer({**vocab, "<new>": V}), tiny_tokenizer, V + 1, V)


def test_padded_head_is_accepted_and_sliced(tiny_tokenizer):
    assert shared_vocab_size(tiny_tokenizer, tiny_tokenizer, V + 64, V) == V
    with pytest.raises(BadInput, match="output head has 500 rows"):
        shared_vocab_size(tiny_tokenizer, tiny_tokenizer, 500, V)


def test_hidden_loss_with_projection_trains_and_maps_layers(pair):
    teacher, student = pair
    assert default_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert parse_layer_map("0:1, 1:3", 2, 4) == [(0, 1), (1, 3)]
    for bad in ("0:4", "2:1", "0-1", "0:1,0:2"):
        with pytest.raises(BadInput, match="--layer-map"):
            parse_layer_map(bad, 2, 4)
    hidden = HiddenStateLoss([(0, 1), (1, 3)], 64, 64, kind="cosine")
    assert not list(hidden.parameters())  # same width: no projection
    wide = HiddenStateLoss([(0, 1), (1, 3)], 64, 96, kind="mse")
    assert [tuple(p.shape) for p in wide.parameters()] == [(96, 64), (96, 64)]
    objective = DistillObjective(LossSpec(), V, teacher=teacher, hidden=hidden, hidden_weight=2.0)
    batch = _batch(_rows(), [0, 1])
    out = objective(student, batch)
    base = DistillObjective(LossSpec(), V, teacher=teacher)(student, batch)
    assert float(out.metrics["hidden"]) > 0
    assert out.loss_sum.item() == pytest.approx(
        base.loss_sum.item() + 2.0 * out.metrics["hidden"].item(), rel=1e-5
    )


def test_hidden_losses_match_reference():
    gen = torch.Generator().manual_seed(0)
    s = {0: torch.randn(2, 5, 8, generator=gen), 1: torch.randn(2, 5, 8, generator=gen)}
    t = {2: torch.randn(2, 5, 12, generator=gen), 3: torch.randn(2, 5, 12, generator=gen)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for kind in ("mse", "cosine"):
        loss = HiddenStateLoss([(0, 2), (1, 3)], 8, 12, kind=kind)
        expected = 0.0
        for (i, j), proj in zip(loss.layer_map, loss.projections, strict=True):
            a, b = s[i][mask] @ proj.weight.T, t[j][mask]
            if kind == "mse":
                expected += ((a - b) ** 2).mean(-1).sum().item()
            else:
                cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
                expected += (1 - cos).sum().item()
        assert loss(s, t, mask).item() == pytest.approx(expected / 2, rel=1e-5)


def test_visited_rows_are_the_rows_the_trainer_serves_under_any_split():
    rows = [torch.arange(4)] * 37
    for steps in (1, 5, 9):  # 9 steps of 8 rows wrap into the second epoch
        served: set[int] = set()
        for rank in (0, 1):
            source = RowSource(rows, pad_id=0, seed=3)
            source.configure(Layout(micro_batch_size=2, grad_accum=2, rank=rank, world_size=2))
            for _ in range(steps):
                for batch in source.next_step():
                    served.update(batch["index"].tolist())
        assert visited_rows(37, 8, steps, seed=3) == sorted(served)


def test_cache_of_visited_rows_refuses_a_run_that_needs_more(tmp_path, pair, tiny_tokenizer):
    teacher, _ = pair
    rows = _rows(n=12)
    dest = tmp_path / "partial"
    dest.mkdir()
    fp = vocabulary_fingerprint(tiny_tokenizer)
    needed = visited_rows(len(rows), 2, 2, seed=0)
    build_teacher_cache(
        teacher, rows, dest, indices=needed, teacher_name="t", k=4, temperature=1.0,
        vocab_size=V, vocab_fingerprint=fp, pad_id=1, progress=False,
    )  # fmt: skip
    cache = open_cache_for(dest, rows, 1.0, fp, needed=needed)
    assert cache.meta.cached_rows == 4 and cache.has_rows(needed)
    with pytest.raises(BadInput, match="holds 4 of the 12 rows"):
        open_cache_for(dest, rows, 1.0, fp, needed=visited_rows(len(rows), 2, 5, seed=0))
