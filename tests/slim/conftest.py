"""Fixtures for the slimming tests: tiny random models of every supported family, plans, inputs.

`family` / `head_family` parametrise a test over every supported model type /
those whose config can express fewer heads; the helpers are handed to tests
as fixtures (`kit.make_model`, `kit.make_plan`, ...).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llmopt.calibrate import Calibration
from llmopt.slim.plan import SlimPlan
from llmopt.slim.shape import Shape

# Every supported model type; qwen2 is built with a tied head (as SmolLM2 has).
FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "opt", "gpt_neox")
HEAD_FAMILIES = ("llama", "qwen2", "mistral")
VOCAB = 512


def make_model(family: str, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    """A tiny random model (hidden 64, 4 heads, MLP 128) whose every parameter, biases and
    norms included, is perturbed, so that a wrong slice of any tensor shows in the outputs."""
    from transformers import AutoModelForCausalLM

    from llmopt.models.zoo import tiny_config

    config = tiny_config(family, vocab_size=VOCAB, layers=layers)
    if family == "qwen2":
        config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval()


def tokens(batch: int = 2, length: int = 20, seed: int = 0) -> torch.Tensor:
    """Random token ids from the tiny vocabulary."""
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def random_calibration(samples: int = 8, seq_len: int = 32, seed: int = 0) -> Calibration:
    """Calibration blocks of random tokens (no corpus needed)."""
    return Calibration(ids=tokens(samples, seq_len, seed), batch_size=4, progress=False)


def make_plan(
    original: Shape,
    layers: list[int] | None = None,
    channels: list[list[int]] | None = None,
    groups: list[list[int]] | None = None,
    heads: list[list[int]] | None = None,
) -> SlimPlan:
    """A plan keeping what is given (per kept layer) and everything else."""
    kept = layers if layers is not None else list(range(original.layers))
    n = len(kept)

    def fill(given, size):
        rows = given if given is not None else [list(range(size))] * n
        return tuple(torch.tensor(r) for r in rows)

    return SlimPlan(
        original,
        tuple(kept),
        fill(channels, original.ffn),
        fill(groups, original.kv_groups),
        fill(heads, original.heads),
    )


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    """Each supported model type in turn."""
    return request.param


@pytest.fixture(params=HEAD_FAMILIES)
def head_family(request) -> str:
    """Each model type whose config can express fewer heads, in turn."""
    return request.param


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers of this module."""
    return SimpleNamespace(
        make_model=make_model,
        make_plan=make_plan,
        tokens=tokens,
        logits=logits,
        random_calibration=random_calibration,
    )
