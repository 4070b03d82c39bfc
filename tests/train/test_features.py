"""Ctrl-C, gradient checkpointing and torch.compile give the loop's usual results."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from llmopt.train import Callback, TrainConfig, TrainingInterrupted, run_training
from llmopt.train import checkpoint as ckpt


def _config(**overrides) -> TrainConfig:
    values = dict(steps=3, micro_batch_size=2, seq_len=32, lr=1e-3, warmup=0, progress=False,
                  precision="fp32")  # fmt: skip
    return TrainConfig(**{**values, **overrides})


class CtrlC(Callback):
    """Sends this process a real SIGINT during step `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_backward(self, trainer) -> None:
        if trainer.step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_finishes_the_step_saves_and_stops(tiny_llama, packed_source, tmp_path):
    # Whatever handled SIGINT before (SIG_IGN in a background job) must be back afterwards.
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        run_training(
            tiny_llama, _config(steps=5), packed_source(), callbacks=[CtrlC(1)], run_dir=tmp_path
        )
    assert stop.value.step == 2  # step index 1 completed, then the loop stopped
    assert ckpt.read_meta(stop.value.checkpoint)["step"] == 2
    assert signal.getsignal(signal.SIGINT) == previous  # handler restored


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_grad_checkpointing_same_result(tiny_llama_dir, packed_source):
    from llmopt import load_model

    plain = run_training(load_model(tiny_llama_dir), _config(), packed_source()).model
    ckpt_model = load_model(tiny_llama_dir)
    run_training(ckpt_model, _config(grad_checkpointing=True), packed_source())
    assert ckpt_model.is_activation_checkpointing
    torch.testing.assert_close(_params(ckpt_model), _params(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_same_result(tiny_llama_dir, packed_source):
    from llmopt import load_model

    plain = run_training(load_model(tiny_llama_dir), _config(), packed_source()).model
    compiled = run_training(load_model(tiny_llama_dir), _config(compile=True), packed_source())
    torch.testing.assert_close(_params(compiled.model), _params(plain), rtol=1e-4, atol=1e-5)


class WithExtra:
    """The LM loss plus a trainable temperature on the logits (an objective-owned parameter)."""

    name = "lm+temperature"

    def __init__(self) -> None:
        self.log_t = torch.nn.Parameter(torch.zeros(()))

    def setup(self, model, device, precision) -> None:
        self.log_t.data = self.log_t.data.to(device)

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_t]

    def __call__(self, model, batch):
        from llmopt.train.objective import ObjectiveOutput, model_inputs, token_cross_entropy_sum

        logits = model(**model_inputs(batch)).logits / self.log_t.exp()
        loss = token_cross_entropy_sum(logits, batch["labels"])
        return ObjectiveOutput(loss_sum=loss, metrics={"t": self.log_t.detach() * 0})


def test_objective_parameters_are_trained(tiny_llama, packed_source):
    objective = WithExtra()
    result = run_training(tiny_llama, _config(log_every=1), packed_source(), objective)
    assert float(objective.log_t.detach()) != 0.0
    assert all("t" in row for row in result.history)  # objective metrics reach the log
