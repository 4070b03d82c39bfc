"""Mixed precision: fp16 skips overflowed steps and stops after too many; bf16 tracks fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmopt.train import Callback, TooManySkippedSteps, TrainConfig, run_training


class Overflow(Callback):
    """Puts an inf into one gradient on the chosen steps (as an fp16 overflow would)."""

    def __init__(self, steps: set[int] | None) -> None:
        self.steps = steps  # None: every step
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}

    def _weight(self, trainer) -> torch.Tensor:
        return trainer.raw_model.model.layers[0].mlp.up_proj.weight

    def after_backward(self, trainer) -> None:
        self.before[trainer.step] = self._weight(trainer).detach().clone()
        if self.steps is None or trainer.step in self.steps:
            self._weight(trainer).grad[0, 0] = float("inf")

    def after_optimizer_step(self, trainer) -> None:
        self.after[trainer.step] = self._weight(trainer).detach().clone()


def _run(model, source, precision, callbacks=(), **overrides):
    config = TrainConfig(steps=5, micro_batch_size=2, seq_len=32, lr=1e-3, warmup=0,
                         precision=precision, progress=False, log_every=1, **overrides)  # fmt: skip
    return run_training(model, config, source, callbacks=callbacks)


def test_fp16_skips_overflowed_step_and_continues(tiny_llama, packed_source):
    hook = Overflow({2})
    result = _run(tiny_llama, packed_source(), "fp16", [hook])
    assert result.skipped_steps == 1
    assert torch.equal(hook.before[2], hook.after[2])  # the overflowed step changed nothing
    assert not torch.equal(hook.before[3], hook.after[3])  # the next one trained again
    assert [r["skipped_steps"] for r in result.history] == [0, 0, 1, 1, 1]
    assert all(torch.isfinite(p).all() for p in tiny_llama.parameters())


def test_fp16_stops_after_consecutive_skips(tiny_llama, packed_source):
    with pytest.raises(TooManySkippedSteps, match="3 steps in a row"):
        _run(tiny_llama, packed_source(), "fp16", [Overflow(None)], max_consecutive_skips=3)


def test_bf16_loss_tracks_fp32(tiny_llama_dir, packed_source):
    from llmopt import load_model

    fp32 = _run(load_model(tiny_llama_dir), packed_source(), "fp32")
    bf16 = _run(load_model(tiny_llama_dir), packed_source(), "bf16")
    for a, b in zip(fp32.history, bf16.history, strict=True):
        assert abs(a["loss"] - b["loss"]) / a["loss"] < 2e-2
    assert bf16.model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32  # master weights


def test_unsupported_precision_is_bad_input(monkeypatch):
    from llmopt.errors import BadInput
    from llmopt.train import precision

    monkeypatch.setattr(precision, "_autocast_works", lambda device, dtype: False)
    with pytest.raises(BadInput, match="fp16"):
        precision.resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize(("feature", "expected"), [("avx512_bf16", "bf16"), (None, "fp32")])
def test_auto_is_bf16_exactly_on_a_cpu_with_native_bf16(monkeypatch, feature, expected):
    from llmopt.train import precision

    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: feature)
    cpu = torch.device("cpu")
    assert precision.resolve_precision("auto", cpu) == expected
    note = precision.describe_precision("auto", cpu)
    assert note.startswith(f"{expected} (auto: ")
    assert (feature or "no native bf16") in note
    assert precision.describe_precision("fp32", cpu) == "fp32 (asked for)"


def test_cpu_feature_query_agrees_with_the_kernel_flags():
    from llmopt.train.precision import cpu_native_bf16

    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    has = "avx512_bf16" in flags or "amx_bf16" in flags
    assert (cpu_native_bf16() is not None) == has


def test_the_choice_and_its_reason_are_logged_and_recorded(tiny_llama, packed_source, capsys):
    result = _run(tiny_llama, packed_source(), "auto")
    note = result.summary["precision_reason"]
    assert note.startswith(result.summary["precision"] + " (auto: ")
    assert "precision:" not in capsys.readouterr().err  # --no-progress: stderr is for errors
    config = TrainConfig(steps=1, micro_batch_size=2, seq_len=32, precision="auto")
    run_training(tiny_llama, config, packed_source())
    assert f"precision: {note}" in capsys.readouterr().err
