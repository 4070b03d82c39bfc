"""Load a model or tokenizer from a zoo name, a local folder or a hub id.

Ordinary checkpoints load with plain transformers. Folders written in one of
llmopt's compact formats (a sparse or a shared-layer checkpoint) say so in
their `llmopt.json` (`"format": NAME`); they are rebuilt by the loader that
the technique registers in `FORMAT_LOADERS`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError

from llmopt.cache import build_once, cache_root
from llmopt.errors import BadInput, did_you_mean
from llmopt.models.zoo import ZOO

# format name -> "module:function" taking (folder, dtype) and returning a model.
# Named lazily so that loading never imports a technique it does not need.
FORMAT_LOADERS: dict[str, str] = {
    "sparse": "llmopt.prune.storage:load_sparse_model",
    "shared": "llmopt.share.apply:load_shared_model",
}


def resolve_model(spec: str) -> Path | str:
    """Turn a model spec into a local folder, or a hub id string.

    Zoo names are materialised into the cache on first use.

    Raises:
        BadInput: a local path that is missing or not a model folder, or a
            name that looks like a misspelt zoo name.
    """
    if spec in ZOO:
        return build_once(cache_root() / "models" / spec, ZOO[spec].build)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInput(f"{spec}: not a model folder (no config.json)")
        return path
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/")
    if looks_local:
        raise BadInput(f"{spec}: no such folder")
    if "/" not in spec:
        hint = did_you_mean(spec, ZOO)
        if hint:
            raise BadInput(f"unknown model {spec!r}{hint}; zoo: {', '.join(ZOO)}")
    return spec  # a hub id: transformers resolves (and downloads) it


def _format_of(folder: Path) -> str:
    record = folder / "llmopt.json"
    if not record.is_file():
        return "dense"
    try:
        return str(json.loads(record.read_text()).get("format", "dense"))
    except json.JSONDecodeError as err:
        raise BadInput(f"{record}: corrupt llmopt.json ({err})") from None


def _format_loader(name: str) -> Callable[[Path, torch.dtype], torch.nn.Module]:
    if name not in FORMAT_LOADERS:
        raise BadInput(
            f"unknown checkpoint format {name!r}; known: dense, {', '.join(FORMAT_LOADERS)}"
        )
    module, _, func = FORMAT_LOADERS[name].partition(":")
    return getattr(importlib.import_module(module), func)


def load_model(
    spec: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal language model in eval mode.

    Args:
        spec: zoo name, local folder or hub id.
        dtype: parameter dtype (float32 unless the caller asks otherwise).
        device: where to put it; None leaves it on the CPU.
        trust_remote_code: allow a hub repository's own modelling code.

    Raises:
        BadInput: the spec does not resolve, or the checkpoint is corrupt.
    """
    from transformers import AutoModelForCausalLM

    where = resolve_model(str(spec))
    try:
        if isinstance(where, Path) and (fmt := _format_of(where)) != "dense":
            model = _format_loader(fmt)(where, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=dtype, trust_remote_code=trust_remote_code
            )
    except BadInput:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = "corrupt or unreadable checkpoint" if isinstance(where, Path) else "cannot load"
        raise BadInput(f"{spec}: {what}: {reason}") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model


def load_tokenizer(spec: str | Path, trust_remote_code: bool = False):
    """Load the tokenizer that belongs to a model spec; pad falls back to EOS.

    Raises:
        BadInput: the spec does not resolve or has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    where = resolve_model(str(spec))
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"{spec}: cannot load its tokenizer: {reason}") from None
    if tokenizer.eos_token_id is None:
        raise BadInput(f"{spec}: its tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
