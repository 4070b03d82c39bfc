"""Strict configuration models shared by every stage.

Configs are pydantic models with `extra="forbid"`: an unknown key is an error
that names the key, and ranges are checked where the value is declared. The
docstring written under each field is its description (and so the help text
of the command-line flag generated from it). NaN and infinities are refused
for every float field: no run should start from a value that cannot train.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmopt.errors import BadInput, did_you_mean

Fraction01 = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A fraction in [0, 1): sparsities, pruning ratios."""

PositiveInt = Annotated[int, Field(ge=1)]


class StrictModel(BaseModel):
    """Base for every config: unknown keys, wrong types and non-finite floats are errors."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        frozen=False,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


def key_name(loc: tuple[Any, ...]) -> str:
    """A field location as a dotted key: ('eval', 'max_tokens') -> 'eval.max_tokens'."""
    return ".".join(str(p) for p in loc) or "value"


def describe_validation_error(
    err: ValidationError,
    where: str = "",
    name_of: Callable[[tuple[Any, ...]], str] = key_name,
    model: type[BaseModel] | None = None,
) -> str:
    """Turn a pydantic error into one line naming the key (or flag) and the bad value.

    Args:
        err: the validation error.
        where: a prefix such as 'recipe.yaml:12: stage wanda' (empty: none).
        name_of: how a field location is spelled: a YAML key, a flag, a keyword.
        model: the config class, to suggest a close field name for an unknown key.
    """
    first = err.errors()[0]
    loc = tuple(first["loc"])
    name = name_of(loc)
    prefix = f"{where}: " if where else ""
    if first["type"] == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _field_names(model, loc[:-1])) if model else ""
        return f"{prefix}unknown key {name!r}{hint}"
    if first["type"] == "missing":
        return f"{prefix}{name}: required"
    message = first["msg"]
    if first["type"] == "finite_number":
        message = "must be a finite number"
    value = first.get("input")
    if name.startswith("--"):  # a flag reads as it was typed: --sparsity 1.2
        return f"{prefix}{name} {value}: {message[:1].lower()}{message[1:]}"
    return f"{prefix}{name}={value!r}: {message}"


def _field_names(model: type[BaseModel], parents: tuple[Any, ...]) -> list[str]:
    for part in parents:
        field = model.model_fields.get(str(part))
        inner = getattr(field, "annotation", None) if field else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)


T = TypeVar("T", bound=StrictModel)


def build(
    cls: type[T],
    values: Mapping[str, Any] | None = None,
    where: str = "",
    name_of: Callable[[tuple[Any, ...]], str] = key_name,
    **more: Any,
) -> T:
    """Validate `values` (and keyword values) into `cls`, raising BadInput with a one-line reason.

    Raises:
        BadInput: a key is unknown, a required key is missing, or a value is out of range.
    """
    try:
        return cls(**{**(values or {}), **more})
    except ValidationError as err:
        raise BadInput(describe_validation_error(err, where, name_of, cls)) from None
