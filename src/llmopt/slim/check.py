"""Checks of a slimming request against the input's config alone, and the shape it asks for.

`check_slim` runs before any model is loaded; every request that cannot be
carried out is refused here with one line naming the value, so that no work
is wasted and nothing is written.
"""

from __future__ import annotations

import math

from llmopt.errors import BadInput
from llmopt.models.arch import config_max_positions, spec_for
from llmopt.slim.candidates import attention_options, candidate_shapes
from llmopt.slim.config import SlimConfig
from llmopt.slim.shape import ParamCounter, Shape, heads_expressible, shape_of

AXES = ("ffn", "heads", "kv_groups", "layers")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def kept_channels(width: int, fraction: float, round_to: int) -> int:
    """MLP channels kept when `fraction` of `width` is removed, rounded to a multiple of `round_to`.

    Removing nothing keeps the width as it is, whatever its rounding.
    """
    if fraction == 0:
        return width
    return math.floor(width * (1.0 - fraction) / round_to + 0.5) * round_to


def _ffn(original: Shape, config: SlimConfig) -> int:
    if config.ffn is None:
        return original.ffn
    kept = kept_channels(original.ffn, config.ffn, config.round_to)
    where = f"--ffn {config.ffn:g} with --round-to {config.round_to}"
    if kept <= 0:
        raise BadInput(f"{where}: removes every one of the {original.ffn} MLP channels")
    if kept >= original.ffn and config.ffn > 0:
        raise BadInput(
            f"{where}: keeps all {original.ffn} MLP channels after rounding "
            "(remove more, or round to a smaller multiple)"
        )
    return kept


def _heads(original: Shape, config: SlimConfig) -> tuple[int, int]:
    """(kv groups, query heads per group) after --heads or --kv-groups."""
    groups, per_group = original.kv_groups, original.heads_per_group
    if config.kv_groups is not None:
        if config.kv_groups >= groups:
            raise BadInput(
                f"--kv-groups {config.kv_groups}: removes every KV group (the model has {groups})"
            )
        return groups - config.kv_groups, per_group
    if config.heads is None or config.heads == 0:
        return groups, per_group
    # Without grouped-query attention every head is its own group: remove whole groups.
    count = groups if per_group == 1 else per_group
    removed = math.floor(config.heads * count + 0.5)
    unit = "heads" if per_group == 1 else "query heads per KV group"
    if removed == 0:
        raise BadInput(
            f"--heads {config.heads:g}: removes none of the {count} {unit} "
            f"(the smallest step is {1 / count:.3g})"
        )
    if removed >= count:
        raise BadInput(f"--heads {config.heads:g}: removes every one of the {count} {unit}")
    if per_group == 1:
        return groups - removed, 1
    return groups, per_group - removed


def _layers(original: Shape, config: SlimConfig) -> int:
    if config.layers is None:
        return original.layers
    if config.layers >= original.layers:
        raise BadInput(
            f"--layers {config.layers}: removes every layer (the model has {original.layers})"
        )
    return original.layers - config.layers


def requested_shape(hf_config, config: SlimConfig) -> Shape:
    """The shape that the single-axis fields of `config` ask for (the original without any).

    Raises:
        BadInput: a request removes everything along an axis, or nothing after rounding.
    """
    original = shape_of(hf_config)
    groups, per_group = _heads(original, config)
    return Shape(
        layers=_layers(original, config),
        ffn=_ffn(original, config),
        kv_groups=groups,
        heads_per_group=per_group,
    )


def _check_combination(config: SlimConfig) -> list[str]:
    given = [axis for axis in AXES if getattr(config, axis) is not None]
    if config.params is not None and given:
        raise BadInput(
            f"--params {config.params:g}: chooses every axis itself; "
            f"do not combine it with {_flag(given[0])}"
        )
    if config.heads is not None and config.kv_groups is not None:
        raise BadInput(
            f"--heads {config.heads:g} and --kv-groups {config.kv_groups}: give one or the other"
        )
    if config.params is None and not given:
        raise BadInput("nothing to remove: give --ffn, --heads, --kv-groups, --layers or --params")
    return given


def _check_heads_axis(hf_config, config: SlimConfig) -> None:
    spec = spec_for(hf_config.model_type)
    asked = [(name, getattr(config, name)) for name in ("heads", "kv_groups")]
    for name, value in asked:
        if value and not heads_expressible(spec):
            raise BadInput(
                f"{_flag(name)} {value:g}: {spec.family} configs derive the head size from "
                "hidden_size / num_attention_heads, so fewer heads cannot be expressed "
                "(slim --ffn or --layers instead)"
            )


def _check_params(hf_config, config: SlimConfig) -> None:
    assert config.params is not None
    counter = ParamCounter(hf_config)
    if candidate_shapes(hf_config, config.params, config.round_to, 2, counter):
        return
    original = counter.original
    ffn = min(config.round_to, original.ffn)
    smallest = min(
        (Shape(1, ffn, *attention) for attention in attention_options(hf_config, original)),
        key=counter.count,
    )
    floor = counter.count(smallest) / counter.total
    raise BadInput(
        f"--params {config.params:g}: cannot be reached; the smallest shape llmopt makes "
        f"({smallest.label(original)}) keeps {floor:.1%} of the parameters"
    )


def check_slim(hf_config, config: SlimConfig) -> None:
    """Refuse every slimming request that cannot be carried out, from config.json alone.

    Args:
        hf_config: the input model's transformers config.
        config: the validated stage config.

    Raises:
        BadInput: (one line naming the value) an unsupported family; --params combined
            with another axis, --heads with --kv-groups, or nothing asked; removing every
            channel, head, KV group or layer, or nothing after rounding; fewer heads
            in a family whose config cannot express them; a --params target below the
            smallest shape; no calibration data, or blocks longer than the model's positions.
    """
    spec_for(getattr(hf_config, "model_type", None) or type(hf_config).__name__)
    _check_combination(config)
    _check_heads_axis(hf_config, config)
    original = shape_of(hf_config)
    if config.params is not None:
        _check_params(hf_config, config)
        removes = True
    else:
        removes = requested_shape(hf_config, config) != original
    if removes and config.calib_data is None:
        raise BadInput("--calib-data none: slimming scores importance on calibration data")
    positions = config_max_positions(hf_config)
    if removes and config.calib_seq_len is not None and config.calib_seq_len > positions:
        raise BadInput(
            f"--calib-seq-len {config.calib_seq_len}: the model has {positions} positions"
        )
