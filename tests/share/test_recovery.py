"""Training a shared model through `llmopt distill` keeps the sharing.

The "shared" checkpoint format binds a model whose layers share tensors
(`save_pretrained` refuses tensors that share memory), so the runner saves the
distilled student through it, in the layout it was read in.
"""

from __future__ import annotations

import pytest
import torch

from llmopt import load_model
from llmopt.share.apply import layout_of


@pytest.mark.slow
def test_distilling_a_shared_model_updates_each_block_once(cli, tmp_path):
    shared = tmp_path / "shared"
    r = cli("share", "tiny-llama", "-k", "2", "--save-format", "shared", "--no-eval", "-o", shared)
    assert r.code == 0, r.err
    r = cli(
        "distill", shared, "--teacher", "tiny-llama", "--steps", "2", "--seq-len", "32",
        "--micro-batch-size", "2", "--lr", "1e-2", "--no-eval", "--no-progress",
        "-o", tmp_path / "recovered",
    )  # fmt: skip
    assert r.code == 0, r.err
    before, after = load_model(shared), load_model(tmp_path / "recovered")
    assert layout_of(after).plan.block_of == (0, 1, 0, 1)
    assert (tmp_path / "recovered" / "llmopt-shared.safetensors").is_file()
    b, a = before.model.layers, after.model.layers
    assert a[0].mlp.up_proj.weight is a[2].mlp.up_proj.weight
    assert not torch.equal(a[0].mlp.up_proj.weight, b[0].mlp.up_proj.weight)
