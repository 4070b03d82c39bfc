"""Write stage outputs so that a failure never leaves a folder that looks complete.

A stage writes into a temporary sibling of its output folder and renames it
into place only at the end. An existing output is replaced only with
`overwrite`, and only after the new one is complete.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmopt.errors import BadInput
from llmopt.provenance import StageRecord, write_record


def check_output(dest: str | Path, overwrite: bool = False) -> Path:
    """Validate an output folder before any work is done.

    Raises:
        BadInput: it exists and is not empty (without overwrite), is a file,
            or its parent cannot be created.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"--output {dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise BadInput(f"--output {dest}: exists and is not empty (pass --overwrite to replace it)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"--output {dest}: cannot create its parent ({err.strerror})") from None
    return dest


@contextmanager
def staged_output(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes `dest` when the block succeeds."""
    dest = check_output(dest, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


# A model that a technique holds in a compact in-memory form (layers that share
# tensors, which `save_pretrained` refuses) is saved by that technique, so any
# later stage (training, distillation) writes it back in the layout it read.
# Marker attribute on the model -> "module:function(model, tokenizer, folder, record)".
MODEL_SAVERS: dict[str, str] = {"llmopt_sharing": "llmopt.share.storage:save_shared_checkpoint"}


def save_checkpoint(model, tokenizer, folder: str | Path, record: StageRecord) -> None:
    """Save a model as an ordinary Hugging Face folder (safetensors) plus `llmopt.json`.

    A model marked by one of `MODEL_SAVERS` is saved by its technique instead
    (which also sets `record.format`).
    """
    folder = Path(folder)
    for marker, target in MODEL_SAVERS.items():
        if getattr(model, marker, None) is not None:
            module, _, func = target.partition(":")
            getattr(importlib.import_module(module), func)(model, tokenizer, folder, record)
            return
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_record(folder, record)
