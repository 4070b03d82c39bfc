"""The training loop: one optimizer step = all micro-batches of all processes.

Why the loss is scaled the way it is: an objective returns the SUM of its
per-token losses. Before the first backward of a step the label tokens of the
whole step (every micro-batch here, all-reduced over processes) are counted,
and each micro-batch's sum is multiplied by `world_size / global_tokens`.
DDP and FSDP average gradients over processes (divide by world_size), so the
product is exactly d(total loss / global tokens): the gradient of one big
batch, however it is split into micro-batches and processes.
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.train import checkpoint as ckpt
from llmopt.train import distributed as dist_util
from llmopt.train.callbacks import Callback
from llmopt.train.config import TrainConfig, check_batch
from llmopt.train.data import Layout, RowSource
from llmopt.train.flops import flops_per_token, mfu, peak_flops
from llmopt.train.model_setup import max_positions, set_activation_checkpointing
from llmopt.train.objective import LMObjective, Objective, count_label_tokens
from llmopt.train.optim import build_optimizer, build_scheduler
from llmopt.train.outcome import (
    NonFiniteTraining,
    TooManySkippedSteps,
    TrainingInterrupted,
    TrainResult,
)
from llmopt.train.precision import (
    Precision,
    describe_precision,
    describe_products,
    resolve_precision,
)
from llmopt.train.resume_state import ResumableState
from llmopt.train.tracking import MetricsLog, ProgressBar

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals that save a checkpoint and stop training (Ctrl-C, and what schedulers send)."""


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


class Trainer(ResumableState):
    """Trains `model` on `data` with `objective` under `config` (see `fit`)."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        data: RowSource,
        objective: Objective | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        run_dir: str | Path | None = None,
        source: str = "",
    ) -> None:
        """Takes the (unwrapped, fp32) model, the config, the data source, the objective
        (default: next-token cross-entropy), callbacks, the folder for checkpoints and
        metrics (None: no files) and the model's source spec (checked on resume).
        """
        from llmopt.train.masks import KeepMasks

        self.config = config
        self.data = data
        self.objective = objective or LMObjective()
        self.callbacks: list[Callback] = list(callbacks)
        if config.keep_masks and not any(isinstance(c, KeepMasks) for c in self.callbacks):
            self.callbacks.insert(0, KeepMasks())
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.source = source
        self.raw_model = model
        self.model: nn.Module = model
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.tokens_seen = 0
        self._stop = False
        self._validated = False
        # (step, loss and metric means, grad norm, lr, metric names), not yet read back.
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, float, list[str]]] = []
        self._step_times: list[tuple[int, float]] = []  # (tokens, seconds) since the last log

    # ----- setup -------------------------------------------------------------------------

    def validate(self) -> None:
        """Check everything the user can get wrong, before any expensive work.

        Raises:
            BadInput: a precision the device cannot run, more rows per step than
                the data has, a checkpoint that cannot be resumed here.
        """
        if self._validated:
            return
        cfg = self.config
        self.world, self.device = dist_util.init_world(cfg.device)
        if cfg.fsdp and not self.world.distributed:
            raise BadInput("--fsdp needs several processes (--nproc N or torchrun)")
        self.precision = Precision(
            resolve_precision(cfg.precision, self.device), self.device, cfg.init_scale
        )
        self.precision_note = describe_precision(cfg.precision, self.device)
        self.products_note = describe_products(self.precision.name, self.device)
        positions = max_positions(self.raw_model)
        if positions is not None and cfg.seq_len > positions:
            raise BadInput(f"--seq-len {cfg.seq_len}: the model has {positions} positions")
        check_batch(cfg, len(self.data), self.world.world_size)
        self.data.configure(
            Layout(cfg.micro_batch_size, cfg.grad_accum, self.world.rank, self.world.world_size)
        )
        if cfg.grad_checkpointing and not getattr(
            self.raw_model, "supports_gradient_checkpointing", False
        ):
            kind = type(self.raw_model).__name__
            raise BadInput(f"--grad-checkpointing: {kind} does not support it")
        self.fingerprint = ckpt.model_fingerprint(self.raw_model)
        self.resume_from = ckpt.find_checkpoint(cfg.resume) if cfg.resume else None
        if self.resume_from is not None:
            self._check_resumable(ckpt.read_meta(self.resume_from), self.resume_from)
        self._validated = True

    def _setup(self) -> None:
        self.validate()
        cfg = self.config
        resume_from = self.resume_from
        model = self.raw_model.to(self.device)
        if cfg.grad_checkpointing:
            # fp32 products through oneDNN (Precision.autocast) must also run in the recompute.
            recompute = self.precision.autocast if self.precision.onednn else None
            set_activation_checkpointing(model, True, recompute)
        if hasattr(model, "config"):
            model.config.use_cache = False
        model.train()
        # The choice and its reason belong in the run's log (and always in its record);
        # --no-progress keeps stderr for the one line of an error.
        if self.world.is_main and cfg.progress:
            print(f"precision: {self.precision_note}", file=sys.stderr, flush=True)
            if self.products_note:
                print(f"fp32 products: {self.products_note}", file=sys.stderr, flush=True)
        self.objective.setup(model, self.device, self.precision)
        self.model = self._wrap(model)
        self.optimizer = build_optimizer(
            self.raw_model, cfg.lr, cfg.weight_decay, cfg.betas, self.objective.extra_parameters()
        )
        self.extra_parameters = list(self.objective.extra_parameters())
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
        self.flops_per_token = flops_per_token(self.raw_model, cfg.seq_len)
        self.peak = peak_flops(self.device, self.precision.name)
        if resume_from is not None:
            self._restore(resume_from)
        self.log = MetricsLog(self.run_dir, enabled=self.world.is_main, resumed_step=self.step)

    def _wrap(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        if cfg.fsdp:
            wrapped = dist_util.wrap_fsdp(model, self.device, self.world)
        elif self.world.distributed:
            wrapped = dist_util.wrap_ddp(model, self.device)
        else:
            wrapped = model
        return torch.compile(wrapped) if cfg.compile else wrapped

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop at the next step boundary."""
        self._stop = True

    # ----- the loop ----------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Run until `config.steps`; returns the trained model and the loss history.

        Raises:
            BadInput: bad batch sizes for the data, a non-resumable checkpoint, a
                precision the device cannot run.
            TrainingInterrupted: Ctrl-C or `request_stop`; a checkpoint was saved
                (when there is a run folder).
            TooManySkippedSteps: fp16 overflowed `max_consecutive_skips` times in a row
                (`NonFiniteTraining`: fp32/bf16 gradients were NaN or infinite
                `max_nonfinite_steps` times in a row).
        """
        self._setup()
        for cb in self.callbacks:
            cb.on_train_start(self)
        started = time.perf_counter()
        previous = self._install_signals()
        bar = ProgressBar(self.config.steps, self.step, self.world.is_main and self.config.progress)
        try:
            while self.step < self.config.steps:
                self._train_step(bar)
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save_checkpoint()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            bar.close()
        self._flush()
        for cb in self.callbacks:
            cb.on_train_end(self)
        self.log.close()
        self.raw_model.eval()
        return self._result(time.perf_counter() - started)

    def _install_signals(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM (what schedulers send) save a checkpoint and stop.

        Returns the handlers they replaced (none off the main thread, where
        Python cannot install any).
        """
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop:  # a second signal: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._stop = True

        return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}

    def _train_step(self, bar: ProgressBar) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        for cb in self.callbacks:
            cb.on_step_start(self)
        batches = self.data.next_step()
        # One collective per step: label tokens (the loss divisor), input tokens
        # (throughput) and the stop flag, so every process agrees on all three.
        counts = torch.tensor(
            [
                sum(int(count_label_tokens(b)) for b in batches),
                sum(int(b["attention_mask"].sum()) for b in batches),
                int(self._stop),
            ],
            dtype=torch.int64,
            device=self.device,
        )
        dist_util.all_reduce_sum(counts)
        label_tokens, input_tokens, stop = counts.tolist()
        if stop:
            self.data.step = self.step  # the fetched step was not trained
            raise TrainingInterrupted(self.step, self.save_checkpoint())
        scale = self.world.world_size / max(label_tokens, 1)
        loss_sum = torch.zeros((), device=self.device)
        extra: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            batch = _to_device(batch, self.device)
            with dist_util.gradient_sync(self.model, i == len(batches) - 1):
                with self.precision.autocast():
                    out = self.objective(self.model, batch)
                self.precision.scale(out.loss_sum * scale).backward()
            loss_sum += out.loss_sum.detach().float()
            for key, value in out.metrics.items():
                extra[key] = (
                    extra.get(key, 0.0) + torch.as_tensor(value, device=self.device).float()
                )
        self._sync_extra_gradients()
        for cb in self.callbacks:
            cb.after_backward(self)
        grad_norm = self._optimizer_step()
        for cb in self.callbacks:
            cb.after_optimizer_step(self)
        self.step += 1
        self.tokens_seen += input_tokens
        sums = torch.stack([loss_sum, *extra.values()])
        dist_util.all_reduce_sum(sums)
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():
            # The schedule counts attempted steps; a skipped fp16 step makes torch warn
            # that the scheduler ran without an optimizer step, which is intended here.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self._pending.append((self.step, sums / max(label_tokens, 1), grad_norm, lr, list(extra)))
        elapsed = time.perf_counter() - t0
        bar.update(input_tokens, elapsed)
        self._step_times.append((input_tokens, elapsed))
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            self._log(bar)

    def _sync_extra_gradients(self) -> None:
        # An objective's own parameters live outside the DDP/FSDP wrapper, so nothing
        # reduced their gradients: average them as the wrapper does the model's.
        if not self.world.distributed:
            return
        for param in self.extra_parameters:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist_util.all_reduce_sum(param.grad).div_(self.world.world_size)

    def _optimizer_step(self) -> torch.Tensor:
        cfg = self.config
        self.precision.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # Without clipping the norm is still computed (max_norm=inf) for the logs.
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        stepped = self._apply_step(grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.consecutive_skips = 0
        else:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            self._stop_if_diverged()
        return grad_norm.detach()

    def _apply_step(self, grad_norm: torch.Tensor) -> bool:
        """Step the optimizer; False when the step was skipped because of inf/NaN.

        fp16's loss scaler decides for itself. In fp32/bf16 a non-finite gradient
        norm (which a NaN or infinite loss makes it) would write NaN into every
        weight, so the step is skipped. The norm is global (gradients are
        reduced before it is taken), so every process skips the same steps.
        """
        if self.precision.scaler is None and not bool(torch.isfinite(grad_norm)):
            return False
        return self.precision.step(self.optimizer)

    def _stop_if_diverged(self) -> None:
        """Raise when too many optimizer steps in a row were skipped."""
        cfg, skips, step = self.config, self.consecutive_skips, self.step + 1
        if self.precision.scaler is not None:
            if skips >= cfg.max_consecutive_skips:
                raise TooManySkippedSteps(
                    f"fp16 gradients overflowed on {skips} steps in a row "
                    f"(up to step {step}); try --precision bf16 or a lower --lr"
                )
        elif skips >= cfg.max_nonfinite_steps:
            raise NonFiniteTraining(
                f"the loss or gradients were NaN or infinite on {skips} steps in a row "
                f"(up to step {step}); nothing was written; try a lower --lr"
            )

    def _flush(self) -> None:
        # Per-step values stay on the device until here, so the loop does not
        # wait for the device every step just to log.
        for step, sums, grad_norm, lr, keys in self._pending:
            values = sums.tolist()
            row = {
                "step": step,
                "loss": values[0],
                "lr": lr,
                "grad_norm": float(grad_norm),
                "skipped_steps": self.skipped_steps,
            }
            row.update(dict(zip(keys, values[1:], strict=True)))
            self.history.append(row)
        self._pending.clear()

    def _log(self, bar: ProgressBar) -> None:
        start = len(self.history)
        self._flush()
        window = self.history[start:] or self.history[-1:]
        tokens = sum(t for t, _ in self._step_times)
        seconds = sum(s for _, s in self._step_times) or 1e-9
        self._step_times.clear()
        row: dict[str, Any] = {
            "step": self.step,
            "loss": sum(r["loss"] for r in window) / len(window),
            "lr": window[-1]["lr"],
            "grad_norm": window[-1]["grad_norm"],
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens / seconds,
            "skipped_steps": self.skipped_steps,
        }
        for key in window[-1]:
            if key not in row:
                row[key] = sum(r[key] for r in window) / len(window)
        if self.precision.loss_scale is not None:
            row["loss_scale"] = self.precision.loss_scale
        util = mfu(row["tokens_per_s"], self.flops_per_token, self.peak, self.world.world_size)
        if util is not None:
            row["mfu"] = util
        bar.show(row)
        if self.world.is_main:
            self.log.write(row)
            for cb in self.callbacks:
                cb.on_log(self, row)

    def _result(self, wall: float) -> TrainResult:
        model: nn.Module | None = self.raw_model
        state = None
        if self.config.fsdp:
            model_sd, _ = self._full_state()
            state = model_sd if self.world.is_main else None
            model = None
        elif not self.world.is_main:
            model = None
        last = self.history[-1]["loss"] if self.history else None
        summary = {
            "steps": self.step,
            "final_loss": last,
            "tokens": self.tokens_seen,
            "train_wall_time_s": round(wall, 3),
            "skipped_steps": self.skipped_steps,
            "processes": self.world.world_size,
            "precision": self.precision.name,
            "precision_reason": self.precision_note,
        }
        if self.products_note:
            summary["fp32_products"] = self.products_note
        return TrainResult(
            model=model,
            state_dict=state,
            history=self.history,
            steps=self.step,
            tokens=self.tokens_seen,
            wall_time_s=wall,
            skipped_steps=self.skipped_steps,
            summary=summary,
        )


def run_training(
    model: nn.Module,
    config: TrainConfig,
    data: RowSource,
    objective: Objective | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    run_dir: str | Path | None = None,
    source: str = "",
) -> TrainResult:
    """Train `model` in place and return it with its loss history (see `Trainer`).

    Raises:
        BadInput, TrainingInterrupted, TooManySkippedSteps: see `Trainer.fit`.
    """
    trainer = Trainer(model, config, data, objective, callbacks, run_dir, source)
    return trainer.fit()
