"""Check a checkpoint's numbers before they drive an allocation, and its weights once loaded.

A config.json or a weights header is just numbers that someone wrote: a
damaged or crafted file can claim a hidden size of a million or a tensor of
10^12 elements, and a loader that trusts it asks for terabytes (or, worse, for
a few more gigabytes than the machine has, and is killed half-way). So every
loader first builds the model the config describes on the `meta` device
(which allocates nothing), refuses it when its weights would not fit in this
process's memory, and then compares each header entry with that skeleton's
tensor shapes. Only the checked numbers are ever used to allocate.
"""

from __future__ import annotations

import json
import math
import os
import resource
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.units import human_bytes, human_count

MAX_LAYERS = 1024
"""More decoder layers than any real model has (the largest have a few hundred).

Building a skeleton costs time per module even on the meta device, so absurd
counts are refused before it is built."""
MAX_EXPERTS = 4096
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def _text_config(config):
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def _check_counts(config, where: str) -> None:
    text = _text_config(config)
    limits = [("num_hidden_layers", MAX_LAYERS), *((key, MAX_EXPERTS) for key in EXPERT_KEYS)]
    for key, limit in limits:
        value = getattr(text, key, None)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
            raise BadInput(f"{where}: config.json {key}={value!r} is not a count in [0, {limit}]")


def skeleton(config, where: str) -> nn.Module:
    """The causal LM that `config` describes, on the meta device (no memory, no init).

    Args:
        config: a transformers config.
        where: names the model in messages (its spec or folder).

    Raises:
        BadInput: absurd layer or expert counts, or a config transformers cannot build.
    """
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    _check_counts(config, where)
    try:
        with torch.device("meta"), no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()
    # On the meta device the config is the only input: whatever the modelling code raises
    # on its values (a negative size, heads that do not divide, an assert) is the config's.
    except Exception as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise BadInput(f"{where}: config.json does not describe a model ({reason})") from None
    return model


def memory_limit() -> int:
    """Bytes this process may hold: the machine's memory, less if a cgroup or rlimit says so."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - _address_space_in_use()))
    return min(limits)


def _address_space_in_use() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def weight_bytes(model: nn.Module, dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(unique parameter + buffer elements, their bytes at `dtype`) of a (meta) model."""
    elements = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return elements, elements * torch.empty((), dtype=dtype).element_size()


def check_fits(model: nn.Module, where: str, dtype: torch.dtype = torch.float32) -> None:
    """Refuse a (meta) model whose weights at `dtype` would not fit in memory.

    Raises:
        BadInput: they would not (the message gives both sizes).
    """
    elements, size = weight_bytes(model, dtype)
    limit = memory_limit()
    if size > limit:
        raise BadInput(
            f"{where}: config.json describes {human_count(elements)} parameters "
            f"({human_bytes(size)} as {str(dtype).removeprefix('torch.')}), more than the "
            f"{human_bytes(limit)} of memory this process may use"
        )


def check_config(config, where: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """`skeleton` + `check_fits`: the meta model of a config whose weights fit in memory.

    Raises:
        BadInput: see `skeleton` and `check_fits`.
    """
    model = skeleton(config, where)
    check_fits(model, where, dtype)
    return model


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict name of a (meta) model with its shape (aliases included)."""
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


def read_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """The tensor table of a safetensors file (name -> (dtype, shape)) and its metadata.

    Only the header is read; safetensors itself refuses a header whose offsets
    do not match the file's size.

    Raises:
        BadInput: the file is not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            table = {}
            for key in handle.keys():  # noqa: SIM118 (a handle, not a dict)
                part = handle.get_slice(key)
                table[key] = (part.get_dtype(), tuple(part.get_shape()))
            return table, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"{path}: corrupt or unreadable checkpoint ({reason})") from None


def check_header_shapes(
    path: Path, table: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, tuple[int, ...]]
) -> None:
    """Refuse a weights file holding a tensor whose shape differs from the model's.

    Names the model does not have are left to the loader (which may rename them).

    Raises:
        BadInput: a shape mismatch, naming the tensor and both shapes.
    """
    for name, (_, shape) in table.items():
        want = expected.get(name)
        if want is not None and want != shape:
            raise BadInput(
                f"{path}: tensor {name!r} has shape {list(shape)}, "
                f"its config.json says {list(want)}"
            )


def check_dense_folder(folder: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Check the headers of every safetensors file of a dense folder against the model.

    Raises:
        BadInput: a corrupt file or a shape that config.json does not give.
    """
    for path in sorted(folder.glob("*.safetensors")):
        table, _ = read_header(path)
        check_header_shapes(path, table, expected)


def parse_shape(value: Any) -> tuple[int, ...] | None:
    """A shape from JSON (a list of non-negative ints), or None if it is not one."""
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return None
    return tuple(value)


def json_object(text: str | None) -> dict | None:
    """`text` parsed as a JSON object, or None if it is not one."""
    try:
        value = json.loads(text) if text is not None else None
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def numel(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of `shape`."""
    return math.prod(shape)


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or ±inf, or None.

    Buffers are left out: some families keep legitimate -inf masks there.
    """
    for name, param in model.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param.detach()).all()):
            return name
    return None


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Refuse a model with a NaN or infinite weight before any work is done with it.

    Args:
        model: the loaded model.
        what: how the message names it (the model spec, '--teacher X').

    Raises:
        BadInput: a weight is not finite (the message names the tensor).
    """
    name = first_nonfinite(model)
    if name is not None:
        raise BadInput(f"{what}: its weights hold NaN or infinite values ({name})")
