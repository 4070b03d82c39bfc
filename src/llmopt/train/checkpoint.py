"""Resumable checkpoints: written whole or not at all, checked whole before a resume.

A checkpoint is a folder `step-0000010/` holding the model and optimizer
state (full, unsharded tensors: the same files for 1 process, DDP or FSDP),
the scheduler, the loss scaler, every process's RNG states, the data position
and the loss history (`trainer.json`). It is written into a hidden temporary
sibling and renamed into place, so a process killed mid-save leaves the
previous checkpoint as the newest complete one; hidden folders are never
taken for checkpoints. After each save the newest K up to the current step
are kept (`rotate`), so the newest checkpoint is always the current run's.
A resume reads nothing before `check_checkpoint` has found every file whole.
"""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from llmopt.errors import BadInput
from llmopt.outputs import staged_output

PREFIX = "step-"
META = "trainer.json"
TENSOR_FILES = ("model", "optimizer", "scaler", "rng")
"""The torch.save files of a checkpoint (besides `META`)."""
META_KEYS = (
    "step",
    "config",
    "fingerprint",
    "world_size",
    "data",
    "scheduler",
    "history",
    "skipped_steps",
    "consecutive_skips",
    "tokens_seen",
)
"""What a resume reads from `META`."""


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after `step` optimizer steps."""
    return f"{PREFIX}{step:07d}"


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder's name says (None for other names)."""
    digits = path.name.removeprefix(PREFIX)
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest (lowest step) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None and (p / META).is_file()]
    return sorted(found, key=checkpoint_step)


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
    """Write one checkpoint atomically into `folder`, then rotate (see `rotate`).

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
    rotate(folder, step, keep)
    return final


def rotate(folder: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` checkpoints up to `step`, the one just written among them.

    Checkpoints past `step` belong to no run that is going on (an abandoned
    run, or the future that a resume from an earlier step replaces): they are
    removed too, so that the newest checkpoint, which `--resume RUN` picks, is
    always this run's.
    """
    found = list_checkpoints(folder)
    mine = [p for p in found if checkpoint_step(p) <= step]
    later = [p for p in found if checkpoint_step(p) > step]
    for stale in [*mine[:-keep], *later]:
        shutil.rmtree(stale, ignore_errors=True)


def read_meta(path: Path) -> dict[str, Any]:
    """The `trainer.json` of a checkpoint.

    Raises:
        BadInput: it is unreadable, not a JSON object, or lacks what a resume needs.
    """
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = getattr(err, "msg", None) or type(err).__name__
        raise BadInput(f"--resume {path}: corrupt checkpoint ({META}: {reason})") from None
    if not isinstance(meta, dict):
        raise BadInput(f"--resume {path}: corrupt checkpoint ({META} is not a JSON object)")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise BadInput(f"--resume {path}: corrupt checkpoint ({META} lacks {missing[0]!r})")
    if not isinstance(meta["step"], int) or not isinstance(meta["world_size"], int):
        raise BadInput(f"--resume {path}: corrupt checkpoint (its step or world size)")
    return meta


def check_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a resume reads from a checkpoint, checked whole before any model is loaded.

    Each tensor file is a torch.save zip archive; its entries must be stored
    uncompressed (as torch writes them, so no entry can claim more bytes than
    the file has) and pass their CRC check, so a truncated or damaged file is
    found here and not after minutes of loading and measuring.

    Returns:
        The checkpoint's `trainer.json`.

    Raises:
        BadInput: a file is missing, truncated or corrupt.
    """
    meta = read_meta(path)
    for stem in TENSOR_FILES:
        _check_archive(path, path / f"{stem}.pt")
    return meta


def _check_archive(checkpoint: Path, file: Path) -> None:
    if not file.is_file():
        raise BadInput(f"--resume {checkpoint}: incomplete checkpoint ({file.name} is missing)")
    try:
        with zipfile.ZipFile(file) as archive:
            if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
                raise BadInput(f"--resume {checkpoint}: {file.name} was not written by llmopt")
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise BadInput(
            f"--resume {checkpoint}: truncated or corrupt checkpoint ({file.name}: {err})"
        ) from None
    if damaged is not None:
        raise BadInput(
            f"--resume {checkpoint}: corrupt checkpoint ({file.name}: {damaged} fails its CRC)"
        )


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
