"""Resumable checkpoints: written whole or not at all, the newest K kept.

A checkpoint is a folder `step-0000010/` holding the model and optimizer
state (full, unsharded tensors: the same files for 1 process, DDP or FSDP),
the scheduler, the loss scaler, every process's RNG states, the data position
and the loss history (`trainer.json`). It is written into a hidden temporary
sibling and renamed into place, so a process killed mid-save leaves the
previous checkpoint as the newest complete one; hidden folders are never
taken for checkpoints.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from llmopt.errors import BadInput
from llmopt.outputs import staged_output

PREFIX = "step-"
META = "trainer.json"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after `step` optimizer steps."""
    return f"{PREFIX}{step:07d}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / META).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(spec: str | Path) -> Path:
    """A checkpoint folder, or the newest checkpoint inside a run's checkpoints folder.

    Raises:
        BadInput: no complete checkpoint there.
    """
    path = Path(spec).expanduser()
    if (path / META).is_file():
        return path
    for candidate in (path, path / "checkpoints"):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    raise BadInput(f"--resume {spec}: no checkpoint there (expected {checkpoint_name(0)}/...)")


def write_checkpoint(
    folder: Path, step: int, tensors: dict[str, Any], meta: dict[str, Any], keep: int
) -> Path:
    """Write one checkpoint atomically into `folder` and delete all but the newest `keep`.

    `tensors` maps file stems to objects of tensors/containers (saved with
    torch.save); `meta` is JSON.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    # Staged and renamed; re-saving the same step (after a resume) swaps the old one out.
    with staged_output(final) as tmp:
        for stem, obj in tensors.items():
            torch.save(obj, tmp / f"{stem}.pt")
        (tmp / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")
    for stale in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """The `trainer.json` of a checkpoint."""
    return json.loads((path / META).read_text())


def read_tensors(path: Path, stem: str) -> Any:
    """One tensor file of a checkpoint (weights_only: no code is unpickled)."""
    return torch.load(path / f"{stem}.pt", map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy) as plain tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies an architecture: its type and every parameter's name and shape."""
    import hashlib

    shapes = sorted((n, tuple(p.shape)) for n, p in model.state_dict().items())
    digest = hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return {"model_type": kind, "parameters": digest, "tensors": len(shapes)}
