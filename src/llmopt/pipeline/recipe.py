"""Recipes: a YAML file of named stages, validated whole before anything runs.

```yaml
model: smollm2-135m          # the recipe's input (llmopt run --model overrides it)
defaults:                    # keys given to every stage whose config has them
  eval: {max_tokens: 4096, seq_len: 256}
stages:
  pruned:                    # a stage's name is its output folder in the run
    stage: prune             # which stage; the other keys are its config keys,
    method: wanda            # the same as the verb's flags (--calib-samples ->
    pattern: "2:4"           # calib_samples) and the Python keywords
  recovered:
    stage: distill           # input: the previous stage's output, unless `model:`
    teacher: "@input"        # "@input" is the recipe's input, "@NAME" a stage's output
    keep_masks: true
```

Every message names the file, the line, the stage and the key. `--set
NAME.key=value` (value in YAML syntax) changes a key before validation.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmopt.config import describe_validation_error
from llmopt.errors import BadInput, did_you_mean
from llmopt.stage import Stage, StageConfig

TOP_KEYS = ("description", "model", "defaults", "stages")


class _Loader(yaml.SafeLoader):
    """YAML without YAML 1.1's base-60 numbers: `pattern: 2:4` is the string '2:4', not 124."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """YAML as a recipe reads it (safe, and `2:4` stays a string)."""
    return yaml.load(text, Loader=_Loader)


INPUT = "@input"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RecipeStage:
    """One validated stage of a recipe.

    Attributes:
        name: its name (and output folder).
        kind: the registered stage ('prune', ...).
        model: its input: '@input' or '@NAME' of an earlier stage.
        config: the validated config, references still unresolved ('@input', '@NAME').
        references: config keys whose value names another output.
    """

    name: str
    kind: str
    model: str
    config: StageConfig
    references: dict[str, str] = field(default_factory=dict)


@dataclass
class Recipe:
    """A validated recipe: where it came from, its input and its stages in order."""

    path: Path
    model: str
    stages: list[RecipeStage]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    """The effective recipe (after --set and --model), as YAML would hold it."""


class _Lines:
    """Line numbers of the keys of a YAML document (1-based), from its node tree."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text)
        except yaml.YAMLError:
            return
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                where = (*path, str(key.value))
                self.lines[where] = key.start_mark.line + 1
                self._walk(value, where)

    def at(self, *path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def _where(path: Path, lines: _Lines, *key: str) -> str:
    line = lines.at(*key)
    return f"{path}:{line}" if line else str(path)


def load_recipe(
    path: str | Path, sets: list[str] | tuple[str, ...] = (), model: str | None = None
) -> Recipe:
    """Read, override and validate a recipe file; nothing runs.

    Args:
        path: the YAML file.
        sets: `NAME.key=value` overrides (`NAME.eval.max_tokens=4096` for nested keys).
        model: overrides the recipe's input model.

    Raises:
        BadInput: unreadable YAML, unknown top-level keys, stages or keys, bad values,
            references to missing or later stages, malformed --set; every message
            names the file, the line, the stage and the key.
    """
    path = resolve_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: cannot read the recipe ({err})") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    lines = _Lines(text)
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: a recipe is a mapping with keys {', '.join(TOP_KEYS)}")
    raw = copy.deepcopy(raw)
    for key in raw:
        if key not in TOP_KEYS:
            hint = did_you_mean(str(key), TOP_KEYS)
            raise BadInput(f"{_where(path, lines, str(key))}: unknown key {key!r}{hint}")
    if model is not None:
        raw["model"] = model
    for item in sets:
        _apply_set(raw, item, path)
    return _validate(raw, path, lines)


def resolve_recipe(spec: str | Path) -> Path:
    """A recipe file, or the name of a recipe shipped with llmopt (`demo`, ...).

    Raises:
        BadInput: neither a file nor a shipped recipe.
    """
    from llmopt.recipes import shipped

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    recipes = shipped()
    if str(spec) in recipes:
        return recipes[str(spec)]
    hint = did_you_mean(str(spec), recipes)
    raise BadInput(f"{spec}: no such recipe file{hint}; shipped: {', '.join(recipes)}")


def _apply_set(raw: dict[str, Any], item: str, path: Path) -> None:
    target, sep, value = item.partition("=")
    parts = target.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise BadInput(f"--set {item!r}: expected NAME.key=value")
    stages = raw.get("stages")
    if parts[0] == "defaults":
        node = raw.setdefault("defaults", {})
    elif isinstance(stages, dict) and parts[0] in stages:
        node = stages[parts[0]]
    else:
        known = list(stages) if isinstance(stages, dict) else []
        raise BadInput(
            f"--set {item!r}: no stage {parts[0]!r} in {path}{did_you_mean(parts[0], known)}"
        )
    for part in parts[1:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BadInput(f"--set {item!r}: {part!r} is not a mapping")
    try:
        node[parts[-1]] = parse_yaml(value)
    except yaml.YAMLError:
        raise BadInput(f"--set {item!r}: the value is not valid YAML") from None


def _validate(raw: dict[str, Any], path: Path, lines: _Lines) -> Recipe:
    from llmopt.pipeline.registry import STAGES

    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise BadInput(f"{_where(path, lines, 'model')}: 'model' (the input model) is required")
    stages = raw.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise BadInput(f"{_where(path, lines, 'stages')}: 'stages' must map names to stages")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BadInput(f"{_where(path, lines, 'defaults')}: 'defaults' must be a mapping")
    out: list[RecipeStage] = []
    previous = INPUT
    for name, body in stages.items():
        where = _where(path, lines, "stages", str(name))
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadInput(f"{where}: stage name {name!r}: use letters, digits, '.', '_', '-'")
        if not isinstance(body, dict) or "stage" not in body:
            raise BadInput(f"{where}: stage {name!r}: needs 'stage: KIND' ({', '.join(STAGES)})")
        body = dict(body)
        kind = body.pop("stage")
        if kind not in STAGES:
            hint = did_you_mean(str(kind), STAGES)
            raise BadInput(
                f"{_where(path, lines, 'stages', name, 'stage')}: stage {name!r}: "
                f"unknown stage {kind!r}{hint}; known: {', '.join(STAGES)}"
            )
        cls = STAGES[kind]
        if not cls.writes_checkpoint:
            raise BadInput(
                f"{_where(path, lines, 'stages', name, 'stage')}: stage {name!r}: {kind!r} "
                "writes no checkpoint; every output of a run is measured already (defaults.eval)"
            )
        source = body.pop("model", previous)
        earlier = [s.name for s in out]
        _check_reference(source, earlier, path, lines, name, "model")
        values = _with_defaults(cls, defaults, body)
        references = {
            key: value
            for key, value in values.items()
            if isinstance(value, str) and value.startswith("@")
        }
        for key, value in references.items():
            _check_reference(value, earlier, path, lines, name, key)
        config = _build(cls, values, path, lines, name)
        out.append(RecipeStage(name, kind, source, config, references))
        previous = f"@{name}"
    _check_defaults(defaults, out, path, lines)
    description = str(raw.get("description") or "")
    return Recipe(path, model, out, description, raw)


def _check_defaults(defaults: dict, stages: list[RecipeStage], path: Path, lines: _Lines) -> None:
    """A default that no stage of the recipe takes is a typo, not a no-op."""
    known = {key for s in stages for key in type(s.config).model_fields}
    for key in defaults:
        if key not in known:
            hint = did_you_mean(str(key), known)
            raise BadInput(
                f"{_where(path, lines, 'defaults', str(key))}: defaults: no stage of this "
                f"recipe has the key {key!r}{hint}"
            )


def _with_defaults(cls: type[Stage], defaults: dict, body: dict) -> dict[str, Any]:
    """The stage's keys over the recipe's defaults (only the keys its config has)."""
    fields = cls.config_class.model_fields
    merged: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in fields:
            merged[key] = copy.deepcopy(value)
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _check_reference(
    value: Any, earlier: list[str], path: Path, lines: _Lines, stage: str, key: str
) -> None:
    if not isinstance(value, str) or not value.startswith("@"):
        return  # a plain model spec (a zoo name, a folder) is allowed anywhere
    target = value[1:]
    if value != INPUT and target not in earlier:
        where = _where(path, lines, "stages", stage, key)
        hint = did_you_mean(target, earlier)
        raise BadInput(
            f"{where}: stage {stage!r}: {key}: {value!r} names no earlier stage{hint} "
            f"(earlier: {', '.join(earlier) or 'none'}; or @input)"
        )


def _build(cls: type[Stage], values: dict, path: Path, lines: _Lines, name: str) -> StageConfig:
    from pydantic import ValidationError

    try:
        return cls.config_class(**values)
    except ValidationError as err:
        loc = tuple(str(p) for p in err.errors()[0]["loc"])
        where = f"{_where(path, lines, 'stages', name, *loc)}: stage {name!r}"
        raise BadInput(describe_validation_error(err, where, model=cls.config_class)) from None
