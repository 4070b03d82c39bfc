"""No silent NaN models: non-finite options, NaN inputs and teachers, diverging runs."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from llmopt.cli.flags import flag_of
from llmopt.pipeline.registry import STAGES

from .conftest import QUICK, copy_model, leftovers, one_line


def _bare(annotation: Any) -> Any:
    """The type without `| None` and Annotated metadata."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _float_fields(model: type[BaseModel], loc: tuple[str, ...] = ()):
    """(location, 'float' | 'tuple') of every float field of a config, nested ones included."""
    for name, field in model.model_fields.items():
        kind = _bare(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _float_fields(kind, (*loc, name))
        elif kind is float:
            yield (*loc, name), "float"
        elif get_origin(kind) is tuple and float in get_args(kind):
            yield (*loc, name), "tuple"


def _required(model: type[BaseModel]) -> dict[str, Any]:
    """A value for every required field (a literal's first choice, else a word).

    The word need not be valid: checks across fields run only once every field
    is valid, so the error reported is the float's.
    """
    values = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            kind = _bare(field.annotation)
            values[name] = get_args(kind)[0] if get_origin(kind) is Literal else "x"
    return values


FLOAT_OPTIONS = [
    pytest.param(stage, loc, kind, value, id=f"{stage}{flag_of(loc)}={value}")
    for stage, cls in STAGES.items()
    for loc, kind in _float_fields(cls.config_class)
    for value in ("nan", "inf", "-inf")
]


def test_the_float_options_are_found():
    found = {(stage, flag_of(loc)) for stage, loc, _, _ in (p.values for p in FLOAT_OPTIONS)}
    assert {("train", "--lr"), ("distill", "--temperature"), ("prune", "--threshold"),
            ("train", "--weight-decay"), ("train", "--betas")} <= found  # fmt: skip


@pytest.mark.parametrize(("stage", "loc", "kind", "value"), FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinities(cli, tmp_path, stage, loc, kind, value):
    cls = STAGES[stage]
    flag = flag_of(loc)
    given = value if kind == "float" else f"{value},0.9"
    output = ["-o", tmp_path / "out"] if cls.writes_checkpoint else []
    required = [arg for k, v in _required(cls.config_class).items() for arg in (flag_of((k,)), v)]
    r = cli(stage, "tiny-llama", *output, *required, f"{flag}={given}")
    assert r.code == 2
    line = one_line(r.err)
    assert flag in line and "must be a finite number" in line
    assert list(tmp_path.iterdir()) == []
    # The Python API and recipes validate through the same config.
    from llmopt.errors import BadInput
    from llmopt.pipeline.runner import make_config

    number = float(value)
    assert not math.isfinite(number)
    values: dict[str, Any] = {}
    node = values
    for part in loc[:-1]:
        node = node.setdefault(part, {})
    node[loc[-1]] = number if kind == "float" else (number, 0.9)
    with pytest.raises(BadInput, match="must be a finite number"):
        make_config(cls, values, **_required(cls.config_class))


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, tiny_llama_dir):
    """tiny-llama with one NaN in a decoder weight (as a broken upstream run leaves it)."""
    model = copy_model(tiny_llama_dir, tmp_path_factory.mktemp("nan") / "nan-llama")
    weights = load_file(model / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


@pytest.mark.parametrize(
    "argv",
    [
        ("train", *QUICK),
        ("prune", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "2",
         "--calib-seq-len", "32", "--no-eval", "--no-progress"),
        ("eval", "--no-speed", "--no-progress"),
    ],
    ids=["train", "prune", "eval"],
)  # fmt: skip
def test_a_nan_input_model_is_reported_before_any_work(cli, tmp_path, nan_model, argv):
    stage, *flags = argv
    output = ["-o", tmp_path / "out"] if stage != "eval" else []
    r = cli(stage, nan_model, *output, *flags)
    assert r.code == 2
    line = one_line(r.err)
    assert f"{nan_model}: its weights hold NaN or infinite values" in line
    assert "model.layers.1.mlp.up_proj.weight" in line
    assert list(tmp_path.iterdir()) == []


def test_a_nan_teacher_is_reported_before_training(cli, tmp_path, nan_model):
    r = cli("distill", "tiny-llama", "--teacher", nan_model, "-o", tmp_path / "out", *QUICK)
    assert r.code == 2
    line = one_line(r.err)
    assert f"--teacher {nan_model}: its weights hold NaN or infinite values" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert not (tmp_path / "out.train" / "checkpoints").exists()  # no step was trained


def test_a_diverging_run_stops_with_one_line_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("train", "tiny-llama", "-o", out, *QUICK, "--steps", "50", "--lr", "1e6",
            "--warmup", "0", "--max-nonfinite-steps", "3", "--precision", "fp32")  # fmt: skip
    assert r.code == 1
    line = one_line(r.err)
    assert "NaN or infinite on 3 steps in a row" in line and "nothing was written" in line
    assert not out.exists() and [n for n in leftovers(tmp_path) if n.startswith(".out")] == []


def test_skipped_non_finite_steps_leave_the_weights_finite(tiny_llama_dir, tiny_tokenizer):
    """A step whose gradients are NaN is skipped whole: the weights stay as they were."""
    import torch

    from llmopt import load_model
    from llmopt.train import Callback, TrainConfig, run_training
    from llmopt.train.data import RowSource, packed_rows

    class PoisonStep(Callback):
        def after_backward(self, trainer) -> None:
            if trainer.step == 1:  # only the second step's gradients are NaN
                next(trainer.raw_model.parameters()).grad.fill_(float("nan"))

    ids = torch.randint(
        0, len(tiny_tokenizer), (8 * 32,), generator=torch.Generator().manual_seed(1)
    )
    config = TrainConfig(steps=3, micro_batch_size=2, seq_len=32, progress=False,
                         precision="fp32", log_every=1)  # fmt: skip
    result = run_training(load_model(tiny_llama_dir), config, RowSource(packed_rows(ids, 32), 0),
                          callbacks=[PoisonStep()])  # fmt: skip
    assert result.skipped_steps == 1 and result.steps == 3
    assert math.isnan(result.history[1]["grad_norm"])
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.distributed
def test_bad_input_found_by_the_workers_is_still_one_line_and_exit_2(tmp_path, nan_model):
    """Only the workers load the model: their bad input reaches the user as one process's."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "llmopt.cli", "train", str(nan_model), "-o",
               str(tmp_path / "out"), "--nproc", "2", *QUICK]  # fmt: skip
    r = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert f"{nan_model}: its weights hold NaN or infinite values" in line
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
