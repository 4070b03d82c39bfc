"""Fixtures for the sharing tests: fresh tiny models of two families, fixed inputs."""

from __future__ import annotations

import pytest
import torch

FAMILIES = {"llama": "tiny-llama", "gpt2": "tiny-gpt2"}


@pytest.fixture(params=list(FAMILIES))
def tiny_model(request):
    """A fresh fp32 tiny model of each tested family (Llama, GPT-2)."""
    from llmopt import load_model

    return load_model(FAMILIES[request.param])


@pytest.fixture
def tokens() -> torch.Tensor:
    """Two random sequences of 24 tokens from the tiny vocabulary."""
    return torch.randint(2, 512, (2, 24), generator=torch.Generator().manual_seed(0))
