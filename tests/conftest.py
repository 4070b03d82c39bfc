"""Shared fixtures: tiny zoo models, the CLI runner, a quiet transformers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from llmopt.models.compat import quiet_transformers

quiet_transformers()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `llmopt ARGS...` in-process; returns exit code, stdout and stderr."""
    from llmopt.cli import main

    def run(*argv: str) -> CliResult:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """The cached folder of the `tiny-llama` zoo model (built once)."""
    from llmopt.models import resolve_model

    return resolve_model("tiny-llama")


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    """A fresh fp32 `tiny-llama` in eval mode."""
    from llmopt import load_model

    return load_model(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir):
    from llmopt.models import load_tokenizer

    return load_tokenizer(tiny_llama_dir)
