"""Strict configuration models shared by every stage.

Configs are pydantic models with `extra="forbid"`: an unknown key is an error
that names the key, and ranges are checked where the value is declared.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmopt.errors import BadInput

Fraction01 = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A fraction in [0, 1): sparsities, pruning ratios."""

PositiveInt = Annotated[int, Field(ge=1)]


class StrictModel(BaseModel):
    """Base for every config: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def describe_validation_error(err: ValidationError, where: str = "") -> str:
    """Turn a pydantic error into one line naming the key and the bad value."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "value"
    value = first.get("input")
    prefix = f"{where}: " if where else ""
    if first["type"] == "extra_forbidden":
        return f"{prefix}unknown key {loc!r}"
    return f"{prefix}{loc}={value!r}: {first['msg']}"


T = TypeVar("T", bound=StrictModel)


def build(cls: type[T], where: str = "", **values: object) -> T:
    """Validate `values` into `cls`, raising BadInput with a one-line reason.

    Raises:
        BadInput: a key is unknown or a value is out of range.
    """
    try:
        return cls(**values)
    except ValidationError as err:
        raise BadInput(describe_validation_error(err, where)) from None
