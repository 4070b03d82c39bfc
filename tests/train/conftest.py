"""Fixtures for trainer tests: variable-length documents and a quick row source."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

# The documents are random sequences of these words.
TEXT = "the model reads tokens and predicts the next one while gradients flow back"
WORDS = TEXT.split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny matrices gain nothing from more, and on a shared
    machine spinning OpenMP threads make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def docs_jsonl(tmp_path_factory) -> Path:
    """40 documents of 3..60 words: rows of very different lengths with --no-pack."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    with path.open("w") as handle:
        for _ in range(40):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 60))]
            handle.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


@pytest.fixture
def packed_source(tiny_tokenizer):
    """A factory for a RowSource of random packed rows (no file I/O, vocab of tiny-llama)."""
    from llmopt.train.data import RowSource, packed_rows

    def make(rows: int = 32, seq_len: int = 32, seed: int = 0) -> RowSource:
        ids = torch.randint(
            0, len(tiny_tokenizer), (rows * seq_len,), generator=torch.Generator().manual_seed(1)
        )
        return RowSource(packed_rows(ids, seq_len), pad_id=0, seed=seed)

    return make


def param_vector(model_or_state) -> torch.Tensor:
    """All parameters of a model (or state dict), flattened in name order."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return torch.cat([state[k].detach().float().flatten() for k in sorted(state)])


@pytest.fixture
def params_of():
    return param_vector


@pytest.fixture
def load_weights():
    """The tensors of a saved checkpoint folder, by name."""
    from safetensors.torch import load_file

    def load(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(Path(folder) / "model.safetensors")

    return load
