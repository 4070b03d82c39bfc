"""The sequential engine: block i+1 sees the outputs of the *updated* block i."""

from __future__ import annotations

import pytest
import torch

from llmopt import load_model
from llmopt.calibrate import (
    BlockStep,
    capture_block_inputs,
    input_groups,
    run_sequential,
    watch_inputs,
)
from llmopt.models.arch import ArchAdapter


def _ids(n: int = 4, length: int = 32) -> torch.Tensor:
    return torch.randint(0, 500, (n, length), generator=torch.Generator().manual_seed(0))


def test_block0_inputs_are_the_embeddings(tiny_llama):
    ids = _ids()
    inputs = capture_block_inputs(tiny_llama, ids, batch_size=3, device=torch.device("cpu"))
    assert [h.shape[0] for h in inputs.hidden] == [3, 1]  # batched samples
    embedded = ArchAdapter(tiny_llama).embedding()(ids)
    assert torch.equal(torch.cat(inputs.hidden), embedded)


def test_next_block_is_fed_by_the_updated_block(tiny_llama):
    ids = _ids()
    seen: list[tuple[torch.Tensor, BlockStep]] = []

    def handler(step: BlockStep) -> None:
        seen.append((torch.cat(step.inputs.hidden).clone(), step))
        step.feed()  # a measuring feed before the change, as pruners do
        for p in step.block.parameters():
            if p.dim() == 2:
                p.data.mul_(0.5)  # "prune": any change the next block must see

    run_sequential(tiny_llama, ids, handler, batch_size=2)
    blocks = ArchAdapter(tiny_llama).blocks()
    for i in range(len(blocks) - 1):
        step = seen[i][1]
        with torch.no_grad():
            expected = [blocks[i](h, *a, **k) for h, a, k in step.inputs.batches()]
        expected = torch.cat([e[0] if isinstance(e, tuple) else e for e in expected])
        assert torch.allclose(seen[i + 1][0], expected, atol=1e-6)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-neox"])
def test_whole_engine_matches_the_model_when_nothing_changes(family):
    """With no change, the last block's output equals the model's own hidden state."""
    model = load_model(family)
    ids = _ids()
    last: list[torch.Tensor] = []

    def handler(step: BlockStep) -> None:
        step.weights_changed = False
        step.feed()
        last[:] = step.outputs()

    run_sequential(model, ids, handler, batch_size=4)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    # hidden_states[-1] has the final norm applied; compare through it
    norm = ArchAdapter(model).final_norm()
    assert torch.allclose(norm(torch.cat(last)), out.hidden_states[-1], atol=1e-5)


def test_watch_inputs_hessian_and_norms(tiny_llama):
    ids = _ids(2, 16)
    adapter = ArchAdapter(tiny_llama)
    captured: dict[str, torch.Tensor] = {}
    results = {}

    def handler(step: BlockStep) -> None:
        if step.index:
            step.weights_changed = False
            return
        groups = input_groups(adapter, step.block)
        down = groups[-1]["mlp.down_proj"]
        hook = down.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
        with watch_inputs(groups, hessian=True) as stats, watch_inputs(groups) as plain:
            step.feed()
        hook.remove()
        results["h"], results["n"] = stats[-1], plain[-1]

    run_sequential(tiny_llama, ids, handler, batch_size=2)
    x = captured["x"].reshape(-1, captured["x"].shape[-1])
    assert results["h"].tokens == 32
    assert torch.allclose(results["h"].hessian(), 2 * x.T @ x / 32, atol=1e-5)
    assert torch.allclose(results["n"].norms(), x.norm(dim=0), atol=1e-5)


def test_bf16_feeds_keep_fp32_weights(tiny_llama):
    dtypes = set()

    def handler(step: BlockStep) -> None:
        with watch_inputs(input_groups(ArchAdapter(tiny_llama), step.block)):
            step.feed()
        dtypes.update(p.dtype for p in step.block.parameters())

    run_sequential(tiny_llama, _ids(), handler, compute_dtype=torch.bfloat16)
    assert dtypes == {torch.float32}


@pytest.mark.parametrize(("features", "block"), [(600, 256), (64, 16), (50, 64), (7, 2)])
def test_symmetric_gram_update_equals_the_full_product(features, block):
    from llmopt.calibrate.stats import add_gram_lower_, symmetric

    gen = torch.Generator().manual_seed(features)
    acc = torch.zeros(features, features)
    batches = [torch.randn(n, features, generator=gen) for n in (37, 5, 64)]
    for x in batches:
        add_gram_lower_(acc, x, block)
    x = torch.cat(batches)
    want = x.T @ x
    got = symmetric(acc)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(got, got.T)
    if features // block > 1:  # the upper blocks really were skipped
        assert acc[: features // 2, -1].abs().sum() == 0


def test_hessian_with_blocks_smaller_than_the_width(tiny_llama, monkeypatch):
    """Through the hooks as SparseGPT uses them, with several feature blocks per group."""
    from llmopt.calibrate import stats

    monkeypatch.setattr(stats, "GRAM_BLOCK", 16)
    test_watch_inputs_hessian_and_norms(tiny_llama)
