"""Command-line flags generated from a stage's config: the config is the only source.

Every field becomes a flag named after it (`calib_samples` -> `--calib-samples`),
with the field's docstring as help and its default shown; a nested config
prefixes its fields (`eval.max_tokens` -> `--eval-max-tokens`, its `enabled`
field is `--eval/--no-eval`). Booleans get `--x/--no-x`, literals get choices,
`X | None` fields accept `none`. Flags the user did not give are left out of
the values, so the config's own defaults apply: there is one place for them.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

DEST = "cfg"
"""Prefix of the argparse dests that hold config values (keeps them apart from MODEL, -o)."""


def flag_of(loc: tuple[Any, ...]) -> str:
    """The flag of a field location: ('eval', 'max_tokens') -> '--eval-max-tokens'."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if len(parts) > 1 and parts[-1] == "enabled":
        parts = parts[:-1]
    return "--" + "-".join(p.replace("_", "-") for p in parts)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without None and Annotated metadata, whether None is allowed)."""
    optional = False
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation, optional


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _none_or(kind: Any, optional: bool):
    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        return kind(text)

    convert.__name__ = getattr(kind, "__name__", "value")  # argparse names it in errors
    return convert


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


_floats.__name__ = "comma-separated floats"


def _help(field: FieldInfo, optional: bool) -> str:
    # argparse %-formats help strings: a literal '%' in a docstring must be doubled.
    text = (field.description or "").strip().rstrip(".").replace("%", "%%")
    if field.is_required() or "default" in text:  # the docstring already says it
        return text
    default = field.get_default(call_default_factory=True)
    if _is_config(type(default)):
        return text
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, tuple):
        shown = ",".join(str(v) for v in default)
    else:
        shown = "none" if default is None else default
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def _declaring_class(cls: type[BaseModel], name: str) -> type[BaseModel]:
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass
    return cls


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type[BaseModel], loc: tuple[str, ...] = ()
) -> None:
    """Add one flag per field of `cls` (recursively for nested configs), grouped by class."""
    # The stage's own fields first, then what it inherits (calibration, common, training).
    groups = {
        klass: parser.add_argument_group(_title(klass))
        for klass in cls.__mro__
        if isinstance(klass, type) and issubclass(klass, BaseModel) and klass is not BaseModel
    }
    nested = []
    for name, field in cls.model_fields.items():
        annotation, optional = _unwrap(field.annotation)
        if _is_config(annotation):
            nested.append(((*loc, name), annotation))
            continue
        group = groups.get(_declaring_class(cls, name)) or parser
        _add_field(group, (*loc, name), field, annotation, optional)
    for where, annotation in nested:
        add_config_arguments(parser, annotation, where)


def _title(klass: type) -> str:
    return (klass.__doc__ or klass.__name__).strip().splitlines()[0].rstrip(".")


def _add_field(group, loc: tuple[str, ...], field: FieldInfo, annotation: Any, optional: bool):
    flag = flag_of(loc)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    names = [*extra.get("aliases", []), flag]
    kwargs: dict[str, Any] = {
        "dest": ".".join((DEST, *loc)),
        "default": argparse.SUPPRESS,
        "help": _help(field, optional),
    }
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(annotation) is Literal:
        choices = get_args(annotation)
        kwargs["type"] = _none_or(type(choices[0]), optional)
        kwargs["choices"] = [*choices, None] if optional else list(choices)
        kwargs["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
    elif get_origin(annotation) is tuple:
        kwargs["type"] = _floats
        kwargs["metavar"] = "A,B"
    else:
        kind = annotation if annotation in (int, float, str) else str
        kwargs["type"] = _none_or(kind, optional)
        kwargs["metavar"] = {int: "N", float: "X"}.get(kind, "VALUE")
    if field.is_required():
        kwargs["required"] = True
    group.add_argument(*names, **kwargs)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave on the command line, nested like the config."""
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        parts = dest.split(".")
        if parts[0] != DEST:
            continue
        node = values
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return values
