"""Every checkpoint format llmopt writes, and the loader that reads them all.

A folder's format is the `format` of its llmopt.json ('dense' when it has
none). `load_checkpoint` reads any of them; `choose_format` decides how a
stage's output is written: a model that only one format can write (layers
that share tensors) goes to that format; otherwise the format the user asked
for, else the input's format, so a compact format survives every later stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmopt.errors import BadInput, did_you_mean
from llmopt.formats import DENSE, CheckpointFormat
from llmopt.prune.storage import SPARSE
from llmopt.quantize.storage import QUANTIZED
from llmopt.share.storage import SHARED
from llmopt.stage import ModelSource

FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (DENSE, SPARSE, SHARED, QUANTIZED)}


def get_format(name: str, flag: str = "--save-format") -> CheckpointFormat:
    """The registered format called `name`.

    Raises:
        BadInput: no such format.
    """
    if name not in FORMATS:
        raise BadInput(
            f"{flag} {name!r}: unknown format{did_you_mean(name, FORMATS)}; "
            f"known: {', '.join(FORMATS)}"
        )
    return FORMATS[name]


def folder_format(folder: Path, record: dict[str, Any] | None) -> str:
    """The format a folder was written in, from its llmopt.json record (None: dense).

    Raises:
        BadInput: the record names a format llmopt does not know.
    """
    name = str((record or {}).get("format", "dense"))
    get_format(name, flag=f"{folder}: llmopt.json format")
    return name


def open_source(spec: str) -> ModelSource:
    """Resolve a model spec and read what is cheap: config.json, llmopt.json, the format.

    The model config.json describes is built on the meta device (nothing is
    allocated), so a config whose weights would not fit in memory is refused
    here, before any stage loads it.

    Raises:
        BadInput: the spec does not resolve, its config or record is unreadable,
            or its config describes a model that would not fit in memory.
    """
    from llmopt.models import resolve_model
    from llmopt.models.loading import read_config
    from llmopt.models.validate import check_config
    from llmopt.provenance import read_record

    location = resolve_model(str(spec))
    record = read_record(location) if isinstance(location, Path) else None
    hf_config = read_config(location, str(spec))
    check_config(hf_config, str(spec))
    fmt = folder_format(location, record) if isinstance(location, Path) else "dense"
    return ModelSource(str(spec), location, hf_config, fmt, record)


def load_checkpoint(
    spec: str | Path | ModelSource,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a model in any llmopt format (or a plain checkpoint, a zoo name, a hub id).

    Raises:
        BadInput: the spec does not resolve, or the checkpoint is corrupt.
    """
    from llmopt.models.loading import load_model

    source = spec if isinstance(spec, ModelSource) else open_source(str(spec))
    if source.format == "dense":
        return load_model(source.spec, dtype=dtype, device=device)
    fmt = FORMATS[source.format]
    try:
        model = fmt.load(source.location, dtype)
    except BadInput:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"{source.spec}: corrupt or unreadable checkpoint: {reason}") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model


def check_requested_format(requested: str | None, source: ModelSource) -> None:
    """Refuse, before any work, a save format that cannot be honoured.

    Raises:
        BadInput: an unknown format, or one that a format binding the input refuses.
    """
    if requested is None:
        return
    get_format(requested)
    bound = FORMATS[source.format]
    if bound.accepts and requested not in bound.accepts:
        raise BadInput(
            f"--save-format {requested!r}: a {source.format} model is saved as "
            f"{' or '.join(bound.accepts)}"
        )


def choose_format(model: nn.Module, requested: str | None, input_format: str) -> CheckpointFormat:
    """How to write `model`: a binding format, else the requested one, else the input's.

    A compact input format that cannot hold the result (the quantization grid
    left by training, say) falls back to dense; a requested one is an error.

    Raises:
        BadInput: the requested format cannot hold this model.
    """
    for fmt in FORMATS.values():
        if fmt.binds(model):
            return fmt
    fmt = get_format(requested or input_format)
    if fmt.holds(model):
        return fmt
    if requested is not None:
        raise BadInput(f"--save-format {requested}: cannot hold this model")
    return DENSE
