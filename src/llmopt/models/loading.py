"""Load a model or tokenizer from a zoo name, a local folder or a hub id.

Ordinary checkpoints load with plain transformers. Folders written in one of
llmopt's compact formats (a sparse or a shared-layer checkpoint) say so in
their `llmopt.json` (`"format": NAME`); `load_model` here refuses them, and
`llmopt.load_model` (`llmopt.pipeline.formats.load_checkpoint`), which knows
every technique's format, reads them. Before a local folder is loaded, its
config.json and weights headers are checked (`llmopt.models.validate`), so a
damaged or crafted file is refused before it can drive an allocation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from llmopt.cache import build_once, cache_root
from llmopt.errors import BadInput, did_you_mean
from llmopt.models.zoo import ZOO


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
    from llmopt.provenance import read_record

    record = read_record(folder)
    return str((record or {}).get("format", "dense"))


def _one_line(err: Exception) -> str:
    """An exception's message on one line (hub validation errors span several)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text[:300] or type(err).__name__


def read_config(location: Path | str, where: str):
    """The transformers config of a folder or hub id.

    Raises:
        BadInput: config.json is missing, not JSON, or holds values it cannot be built from.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    # The file (or the hub) is the only input here, so whatever a config class raises on
    # its values (TypeError, hub strict-validation errors, ZeroDivisionError, ...) is the
    # file's fault, not llmopt's.
    except Exception as err:
        raise BadInput(f"{where}: cannot read its config ({_one_line(err)})") from None


def check_folder(folder: Path, where: str, dtype: torch.dtype = torch.float32) -> None:
    """Before a dense folder is loaded: its config fits in memory, its headers match it.

    Raises:
        BadInput: config.json is unreadable or absurd, or a weights header disagrees with it.
    """
    from llmopt.models.validate import check_config, check_dense_folder, expected_shapes

    config = read_config(folder, where)
    check_dense_folder(folder, expected_shapes(check_config(config, where, dtype)))


def empty_model(config, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM of `config` whose every weight is about to be overwritten.

    Random initialisation is skipped (seconds for a 100M model on a CPU); the
    embedding tie, which that initialisation would have made, is made here.
    """
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model


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
        BadInput: the spec does not resolve, config.json describes a model too large
            for memory, or the checkpoint is corrupt or disagrees with its config.
    """
    from transformers import AutoModelForCausalLM

    where = resolve_model(str(spec))
    try:
        if isinstance(where, Path) and (fmt := _format_of(where)) != "dense":
            raise BadInput(
                f"{spec}: stored in llmopt's {fmt!r} format; load it with llmopt.load_model"
            )
        if isinstance(where, Path) and not trust_remote_code:
            check_folder(where, str(spec), dtype)
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
