"""`train` as a stage: model folder in -> trained checkpoint folder out.

The stage is the trainer plus what a run needs around it: the training rows,
the run folder (checkpoints and `metrics.jsonl`, OUTPUT.train by default),
the export of an FSDP run's gathered weights. Distillation is this stage with
another objective (`objective()` is the seam). The runner loads, measures and
saves; with `nproc > 1` it launches the workers once `check` and
`before_launch` have passed in the launching process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmopt.config import PositiveInt
from llmopt.errors import BadInput
from llmopt.stage import ModelSource, Stage, StageConfig, StageContext, StageResult
from llmopt.train.callbacks import Callback
from llmopt.train.config import TrainConfig
from llmopt.train.objective import Objective
from llmopt.train.run_folder import RunFolderPlan, plan_run_folder
from llmopt.train.tracking import METRICS_FILE
from llmopt.train.trainer import Trainer
from llmopt.units import human_count


class TrainStageConfig(TrainConfig, StageConfig):
    """What `llmopt train` does: the trainer's knobs plus the data and the processes."""

    data: str = "pydoc"
    """Training text: pydoc, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG[:SPLIT]]."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl, .parquet and hf: sources."""
    run_dir: str | None = None
    """Checkpoints and metrics.jsonl (default: OUTPUT.train beside the output)."""
    nproc: PositiveInt = 1
    """Local processes (launched through torchrun; DDP, or FSDP with --fsdp)."""

    def trainer_config(self) -> TrainConfig:
        """The trainer's own config (this one without the stage's fields)."""
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields)))


def default_run_dir(output: str | Path) -> Path:
    """OUTPUT.train: checkpoints and metrics live beside the output, not inside it."""
    output = Path(output).expanduser()
    return output.with_name(output.name + ".train")


def _positions(hf_config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(hf_config, key, None)
        if value:
            return int(value)
    return None


class TrainStage(Stage):
    """Training (or fine-tuning) with the one trainer: next-token cross-entropy."""

    name = "train"
    help = "train or fine-tune a model (accumulation, mixed precision, DDP/FSDP, resume)"
    config_class = TrainStageConfig
    distributed = True

    config: TrainStageConfig
    trainer: Trainer | None = None
    resume_meta: dict[str, Any] | None = None
    """The resumed checkpoint's trainer.json (set by `check`)."""
    resume_path: Path | None = None
    """The resumed checkpoint folder (set by `check`)."""

    @property
    def run_dir(self) -> Path:
        """The run folder (absolute): `--run-dir`, else OUTPUT.train."""
        cfg = self.config
        if cfg.run_dir:
            return Path(cfg.run_dir).expanduser().resolve()
        assert self.output is not None
        return default_run_dir(self.output).resolve()

    # ----- checks ------------------------------------------------------------------------

    def check(self, source: ModelSource) -> None:
        """Sequence length, precision, FSDP, the resume checkpoint and the run folder.

        From configs and file headers alone, before any model is loaded: a
        truncated or corrupt resume checkpoint and a run folder that holds
        another run are refused here (see `llmopt.train.run_folder`).
        """
        from llmopt.runtime import pick_device
        from llmopt.train.distributed import launched_by_torchrun
        from llmopt.train.precision import resolve_precision

        cfg = self.config
        positions = _positions(source.hf_config)
        if positions is not None and cfg.seq_len > positions:
            raise BadInput(f"--seq-len {cfg.seq_len}: the model has {positions} positions")
        resolve_precision(cfg.precision, pick_device(cfg.device))
        if cfg.fsdp and cfg.nproc < 2 and not launched_by_torchrun():
            raise BadInput("--fsdp needs several processes (--nproc N or torchrun)")
        self.resume_meta = self._check_resume(cfg.nproc) if cfg.resume else None
        self._check_run_dir(source)

    def _check_resume(self, processes: int) -> dict[str, Any]:
        from llmopt.train import checkpoint as ckpt

        path = ckpt.find_checkpoint(self.config.resume)
        meta = ckpt.check_checkpoint(path)
        problems = self.config.trainer_config().resume_mismatches(meta["config"])
        if not torch.distributed.is_initialized() and meta["world_size"] != processes:
            problems.append(f"processes: {meta['world_size']} in the checkpoint, {processes} now")
        if problems:
            raise BadInput(f"--resume {path}: incompatible ({'; '.join(problems)})")
        self.resume_path = path
        return meta

    def _check_run_dir(self, source: ModelSource) -> None:
        """Where the run folder is, that it can be written, that no other run has it."""
        from llmopt.outputs import check_parent, check_unlocked

        run_dir = self.run_dir
        if self.output is not None and _inside(run_dir, self.output.resolve()):
            raise BadInput(
                f"--run-dir {run_dir}: inside the output {self.output}, "
                "which is replaced at the end"
            )
        if source.folder is not None and _inside(run_dir, source.folder.resolve()):
            raise BadInput(f"--run-dir {run_dir}: inside the input model {source.folder}")
        if run_dir.exists() and not run_dir.is_dir():
            raise BadInput(f"--run-dir {run_dir}: exists and is not a folder")
        if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
            raise BadInput(f"--run-dir {run_dir}: is not writable")
        check_parent(run_dir, "--run-dir")
        check_unlocked(run_dir, "--run-dir")
        self._run_plan()

    def _run_plan(self) -> RunFolderPlan:
        """What this run may do to its run folder (raises BadInput if it may not use it)."""
        meta = self.resume_meta
        step = meta["step"] if meta is not None else 0
        return plan_run_folder(self.run_dir, self.resume_path, step, self.overwrite)

    def before_launch(self, ctx: StageContext) -> None:
        """Tokenise (and cache) the data once, and check it against the step size."""
        from llmopt.models import load_tokenizer
        from llmopt.train.config import check_batch

        data = self._rows(load_tokenizer(ctx.source.spec))
        check_batch(self.config, len(data), ctx.processes)

    def measure_seq_len(self, positions: int) -> int:
        """Measure at the training length (or 512, or the model's positions if fewer)."""
        return min(512, positions, self.config.seq_len)

    # ----- the work ----------------------------------------------------------------------

    def objective(
        self, model: nn.Module, tokenizer, ctx: StageContext
    ) -> tuple[Objective | None, list[Callback]]:
        """The loss and extra callbacks (None: next-token cross-entropy). Distillation overrides."""
        return None, []

    def _rows(self, tokenizer):
        from llmopt.train.data import build_source

        cfg = self.config
        return build_source(cfg.data, tokenizer, cfg.seq_len, cfg.pack, cfg.seed, cfg.text_field)

    def prepare(self, model: nn.Module, tokenizer, ctx: StageContext) -> None:
        """Read the rows, build the trainer and run its checks, before the first measurement."""
        from llmopt.train import distributed as dist_util

        # Process 0 tokenises (and caches) first so the others read the cache, not race it.
        if not ctx.is_main:
            dist_util.barrier()
        data = self._rows(tokenizer)
        if ctx.is_main:
            dist_util.barrier()
        self._check_resume_data(data)
        torch.manual_seed(self.config.seed)
        objective, callbacks = self.objective(model, tokenizer, ctx)
        self.trainer = Trainer(
            model.float(),
            self.config.trainer_config(),
            data,
            objective,
            callbacks,
            self.run_dir,
            ctx.source.spec,
        )
        self.trainer.validate()

    def _check_resume_data(self, data) -> None:
        """The resumed checkpoint was trained on these rows (before the first measurement)."""
        meta = self.resume_meta
        if meta is None:
            return
        saved, now = meta["data"], data.state_dict()
        if saved.get("rows") != now["rows"] or saved.get("seed") != now["seed"]:
            raise BadInput(
                f"--resume {self.resume_path}: the checkpoint's data had {saved.get('rows')} "
                f"rows (seed {saved.get('seed')}), this run's has {now['rows']} "
                f"(seed {now['seed']}): not the same data"
            )

    def _fit(self, ctx: StageContext):
        """Train; the main process owns the run folder meanwhile (locked, made ready first)."""
        from llmopt.outputs import output_lock

        assert self.trainer is not None
        if not ctx.is_main:
            return self.trainer.fit()
        with output_lock(self.run_dir, "--run-dir"):
            # Planned again under the lock: the folder may have changed since `check`.
            self._run_plan().execute()
            return self.trainer.fit()

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        from llmopt.train.model_setup import set_activation_checkpointing

        result = self._fit(ctx)
        if not ctx.is_main:
            return StageResult(None)
        trained = result.model
        if trained is None:  # FSDP: rebuild a plain model from the gathered full weights
            trained = ctx.load_model(ctx.source)
            missing, unexpected = trained.load_state_dict(result.state_dict, strict=False)
            if unexpected or any(k not in _tied_keys(trained) for k in missing):
                raise RuntimeError(f"FSDP export: missing {missing}, unexpected {unexpected}")
        trained.to(ctx.device)
        if hasattr(trained, "config"):
            trained.config.use_cache = True
        if self.config.grad_checkpointing:
            set_activation_checkpointing(trained, False)
        return StageResult(trained, {"train": {**result.summary, "run_dir": str(self.run_dir)}})

    def finalize(self, model: nn.Module, folder: Path, result: StageResult) -> None:
        """Copy the run's metrics.jsonl next to the checkpoint."""
        if (self.run_dir / METRICS_FILE).is_file():
            shutil.copy2(self.run_dir / METRICS_FILE, folder / METRICS_FILE)

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        train = record["metrics"]["train"]
        rows = [
            (
                "steps",
                f"{train['steps']}  ({train['processes']} process(es), {train['precision']})",
            ),
            ("final loss", f"{train['final_loss']:.4f}"),
            ("tokens", human_count(train["tokens"])),
            (
                "training time",
                f"{train['train_wall_time_s']:.1f} s  "
                f"({train['tokens'] / max(train['train_wall_time_s'], 1e-9):,.0f} tokens/s)",
            ),
        ]
        if train["skipped_steps"]:
            rows.append(("skipped steps", str(train["skipped_steps"])))
        rows.append(("run folder", train["run_dir"]))
        return rows


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _tied_keys(model) -> set[str]:
    """State-dict keys that alias another parameter (a tied head), so may be absent."""
    seen: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.update({name, seen[id(param)]})
        seen.setdefault(id(param), name)
    return tied
