"""One config per stage is the single source of its flags, recipe keys and Python keywords."""

from __future__ import annotations

import argparse

import pytest

from llmopt.cli import build_parser
from llmopt.cli.flags import flag_of
from llmopt.config import StrictModel
from llmopt.errors import BadInput
from llmopt.pipeline.recipe import load_recipe
from llmopt.pipeline.registry import STAGES
from llmopt.pipeline.runner import make_config


def leaf_fields(cls: type[StrictModel], loc: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field location of a config, nested configs expanded."""
    out = []
    for name, field in cls.model_fields.items():
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, StrictModel):
            out += leaf_fields(inner, (*loc, name))
        else:
            out.append((*loc, name))
    return out


def verb_flags(name: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = set()
    for action in sub.choices[name]._actions:
        if action.dest.startswith("cfg."):
            long = [o for o in action.option_strings if o.startswith("--") and "-no-" not in o]
            flags.add(long[0])
    return flags


MINIMAL = {
    "prune": {"method": "magnitude", "sparsity": 0.5},
    "quantize": {"method": "rtn", "bits": 8},
}
"""The keys a stage cannot do without (the others have defaults)."""


@pytest.mark.parametrize("name", list(STAGES))
def test_flags_keys_and_keywords_come_from_one_config(name, write_recipe):
    cls = STAGES[name]
    fields = leaf_fields(cls.config_class)
    assert fields, name
    # Flags: exactly one per field, named after it.
    assert verb_flags(name) == {flag_of(loc) for loc in fields}
    # Python keywords: every field, given explicitly, is accepted as that field ...
    default = make_config(cls, **MINIMAL.get(name, {}))
    explicit = {k: getattr(default, k) for k in cls.config_class.model_fields}
    assert make_config(cls, **explicit) == default
    # ... and an unknown keyword is refused by name.
    with pytest.raises(BadInput, match="unknown key 'no_such_key'"):
        make_config(cls, no_such_key=1, **MINIMAL.get(name, {}))
    # Recipe keys: the same keys, in YAML, give the same config.
    if cls.writes_checkpoint:
        body = default.model_dump(mode="json", exclude_none=True)
        recipe = load_recipe(
            write_recipe({"model": "tiny-llama", "stages": {"s": {"stage": name, **body}}})
        )
        assert recipe.stages[0].config == default


def test_a_typo_in_a_key_is_named_with_a_suggestion():
    with pytest.raises(BadInput, match="unknown key 'sparsty' \\(did you mean 'sparsity'\\?\\)"):
        make_config(STAGES["prune"], method="wanda", sparsty=0.5)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_everywhere(cli, tmp_path, value):
    r = cli("train", "tiny-llama", "-o", tmp_path / "o", f"--lr={value}")
    assert r.code == 2 and "--lr" in r.err and "finite" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("distill", "tiny-llama", "--teacher", "tiny-llama", "-o", tmp_path / "o",
            f"--temperature={value}")  # fmt: skip
    assert r.code == 2 and "--temperature" in r.err
    assert not (tmp_path / "o").exists()
