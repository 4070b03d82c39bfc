"""Fault injection on tiny models: shared helpers for the promised outcome of each fault.

Every test here breaks something (a file, a flag, a signal, a second run) and
asserts what llmopt promises: the exit status, exactly one line on stderr,
and what is on disk before and after (nothing written, nothing lost, nothing
half-replaced, no lock left behind).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

QUICK = ("--steps", "2", "--micro-batch-size", "2", "--seq-len", "32", "--no-eval",
         "--no-progress")  # fmt: skip
"""A training run of two tiny steps, unmeasured: the cheapest run that writes everything."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny matrices gain nothing from more, and on a shared
    machine spinning OpenMP threads make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Everything under `folder`, hidden entries too: relative path -> bytes (None: a folder)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def one_line(err: str) -> str:
    """The single line a refusal prints on stderr (fails if there are more or none)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden lock, temporary and old entries in `folder` (what a run must not leave)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def copy_model(source: Path, dest: Path) -> Path:
    """A writable copy of a model folder."""
    shutil.copytree(source, dest)
    return dest


def spawn(*argv: str, path: tuple[Path, ...] = (), **kwargs) -> subprocess.Popen:
    """`llmopt ARGV...` as a real process (one thread, this checkout's sources, `path` first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), src, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "llmopt.cli", *map(str, argv)]
    return subprocess.Popen(command, env=env, text=True, **kwargs)
