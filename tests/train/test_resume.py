"""Checkpoints: interrupt + resume equals a straight run; a killed save leaves the old one."""

from __future__ import annotations

import json

import pytest
import torch

from llmopt.train import Callback, TrainConfig, TrainingInterrupted, run_training
from llmopt.train import checkpoint as ckpt

STEPS = 20


class StopAt(Callback):
    """Simulates Ctrl-C: asks the trainer to stop before step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_start(self, trainer) -> None:
        if trainer.step == self.at:
            trainer.request_stop()


def _config(**overrides) -> TrainConfig:
    values = dict(steps=STEPS, micro_batch_size=2, grad_accum=2, seq_len=32, lr=2e-3, warmup=3,
                  log_every=5, progress=False, precision="fp32")  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def _train(tiny_llama_dir, source, run_dir, callbacks=(), **overrides):
    from llmopt import load_model

    torch.manual_seed(0)
    model = load_model(tiny_llama_dir)
    return run_training(model, _config(**overrides), source, callbacks=callbacks,
                        run_dir=run_dir, source=str(tiny_llama_dir))  # fmt: skip


@pytest.fixture(scope="module")
def straight(tiny_llama_dir, tmp_path_factory, tiny_tokenizer):
    from llmopt.train.data import RowSource, packed_rows

    ids = torch.randint(
        0, len(tiny_tokenizer), (24 * 32,), generator=torch.Generator().manual_seed(1)
    )
    make = lambda: RowSource(packed_rows(ids, 32), pad_id=0, seed=0)  # noqa: E731
    result = _train(tiny_llama_dir, make(), tmp_path_factory.mktemp("straight"))
    return make, result


def test_interrupt_then_resume_equals_straight(tiny_llama_dir, tmp_path, straight, params_of):
    make, reference = straight
    with pytest.raises(TrainingInterrupted) as stop:
        _train(tiny_llama_dir, make(), tmp_path, callbacks=[StopAt(10)])
    assert stop.value.step == 10 and stop.value.checkpoint.name == ckpt.checkpoint_name(10)
    resumed = _train(tiny_llama_dir, make(), tmp_path, resume=str(tmp_path))
    assert resumed.history == reference.history  # loss, lr, grad norm of every step
    assert torch.equal(params_of(resumed.model), params_of(reference.model))
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logged] == [5, 10, 15, 20]


def test_killed_save_leaves_previous_checkpoint(tiny_llama_dir, tmp_path, straight, params_of,
                                                 monkeypatch):  # fmt: skip
    import llmopt.outputs as outputs

    make, reference = straight
    real_replace, real_rmtree = outputs.os.replace, outputs.shutil.rmtree

    def die_on_second(src, dst):
        if str(dst).endswith(ckpt.checkpoint_name(10)):
            raise SystemExit("killed")
        return real_replace(src, dst)

    # Like SIGKILL during the rename: no clean-up runs, the temp folder stays behind.
    monkeypatch.setattr(outputs.os, "replace", die_on_second)
    monkeypatch.setattr(outputs.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(SystemExit):
        _train(tiny_llama_dir, make(), tmp_path, save_every=5)
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    monkeypatch.setattr(outputs.shutil, "rmtree", real_rmtree)
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(n.startswith(".") for n in leftovers)  # the half-written one is there, hidden
    assert ckpt.find_checkpoint(tmp_path).name == ckpt.checkpoint_name(5)
    resumed = _train(tiny_llama_dir, make(), tmp_path, save_every=5, resume=str(tmp_path))
    assert torch.equal(params_of(resumed.model), params_of(reference.model))
    kept = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert kept == [ckpt.checkpoint_name(15), ckpt.checkpoint_name(20)]  # keep_last=2
