"""The cheap check of a quantization stage: everything refused from config.json alone.

`check_quantize` builds the model on the meta device (no memory, no
initialisation) to read every layer's shape, so a caller fails fast before
loading weights or calibration data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter, select_block_linears, spec_for
from llmopt.quantize.config import QuantizeConfig
from llmopt.quantize.state import matrix

Targets = dict[int, dict[str, nn.Module]]
"""Block index -> relative linear name -> module."""


def meta_model(hf_config) -> nn.Module:
    """The model a config describes, built on the meta device (no memory, no init).

    Raises:
        BadInput: transformers cannot build a model from this config.
    """
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as err:
        raise BadInput(f"cannot build a model from this config: {err}") from None


def select_targets(adapter: ArchAdapter, config: QuantizeConfig) -> Targets:
    """The decoder linears to quantize, per block, after --targets and --skip.

    Raises:
        BadInput: a regex does not compile, or it selects nothing.
    """
    chosen: Targets = select_block_linears(adapter, config.targets, config.skip)
    if not chosen and not (config.embeddings or config.head):
        raise BadInput("--targets/--skip: no decoder linear is left to quantize")
    return chosen


def extra_modules(adapter: ArchAdapter, config: QuantizeConfig) -> dict[str, nn.Module]:
    """Embedding and/or head asked for, by the name they are reported under."""
    extra: dict[str, nn.Module] = {}
    if config.embeddings:
        extra["embeddings"] = adapter.embedding()
    if config.head:
        head = adapter.head()
        if head is None:
            raise BadInput("--head: this model has no output head")
        extra["head"] = head
    return extra


def _widest_group(widths: list[int], limit: int) -> int:
    """The largest power of two up to `limit` that divides every width (at least 1)."""
    common = math.gcd(*widths)
    size = 1
    while size * 2 <= limit and common % (size * 2) == 0:
        size *= 2
    return size


def _check_widths(linears: dict[str, int], extras: dict[str, int], config: QuantizeConfig) -> None:
    size, joint = config.group_size, config.joint()
    every = {**linears, **extras}
    for name, width in every.items():
        if size is not None and width % size:
            hint = _widest_group(list(every.values()), size)
            raise BadInput(
                f"--group-size {size}: does not divide the input width {width} of {name} "
                f"({hint} divides every quantized width)"
            )
    # embeddings and head are rounded to nearest, never pruned: N:M applies to linears only
    for name, width in linears.items():
        if joint.structured and width % joint.m:
            raise BadInput(
                f"--pattern {config.pattern}: M={joint.m} does not divide the input width "
                f"{width} of {name}"
            )


def _check_flags(config: QuantizeConfig) -> None:
    joint = config.joint()
    if config.method != "gptq":
        if joint.active:
            raise BadInput("--sparsity/--pattern: joint pruning needs --method gptq")
        if config.act_order:
            raise BadInput("--act-order: only for --method gptq")
    if config.act_order and joint.structured:
        raise BadInput("--act-order: cannot be combined with an N:M --pattern (groups would mix)")
    if config.method == "gptq" and config.calib_data is None:
        raise BadInput("--method gptq needs calibration data; --calib-data none was given")


def check_quantize(hf_config, config: QuantizeConfig) -> None:
    """Refuse, from the model's config alone, anything that cannot be quantized as asked.

    Raises:
        BadInput: an unsupported family, inconsistent flags, a group size or N:M
            pattern that does not divide a layer's input width, or nothing selected.
    """
    spec_for(getattr(hf_config, "model_type", ""))
    _check_flags(config)
    adapter = ArchAdapter(meta_model(hf_config))
    linears = {
        f"{adapter.blocks_path}.{index}.{name}": matrix(module).shape[1]
        for index, group in select_targets(adapter, config).items()
        for name, module in group.items()
    }
    extras = {f"the {n}": matrix(m).shape[1] for n, m in extra_modules(adapter, config).items()}
    _check_widths(linears, extras, config)


def resolve_group_size(hf_config, config: QuantizeConfig) -> QuantizeConfig:
    """The config with a group size that fits the model, when the user gave none.

    The default (128) does not divide every width of some models (smollm2's 576):
    then the largest power of two below it that divides every quantized width is
    used instead. A group size the user asked for is kept (and checked).
    """
    if "group_size" in config.model_fields_set or config.group_size is None:
        return config
    spec_for(getattr(hf_config, "model_type", ""))
    adapter = ArchAdapter(meta_model(hf_config))
    widths = [
        matrix(module).shape[1]
        for group in select_targets(adapter, config).values()
        for module in group.values()
    ]
    widths += [matrix(m).shape[1] for m in extra_modules(adapter, config).values()]
    if all(w % config.group_size == 0 for w in widths):
        return config
    fitted = config.model_copy(update={"group_size": _widest_group(widths, config.group_size)})
    fitted.model_fields_set.discard("group_size")  # still the default's choice, not the user's
    return fitted
