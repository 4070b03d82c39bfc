"""A training stage: model folder in -> trained checkpoint folder + llmopt.json out.

Used by `llmopt train` (LM objective) and by other stages that train with
their own objective (distillation). Measures before and after, writes the
output only when training finished, and leaves resumable checkpoints and
`metrics.jsonl` in the run folder (OUTPUT.train by default).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.evaluate.summary import EvalConfig
from llmopt.train import distributed as dist_util
from llmopt.train.callbacks import Callback
from llmopt.train.config import TrainConfig
from llmopt.train.objective import Objective
from llmopt.train.tracking import METRICS_FILE


@dataclass
class StageSpec:
    """What one training stage reads, writes and measures."""

    model: str
    data: str
    output: str
    config: TrainConfig
    text_field: str = "text"
    overwrite: bool = False
    run_dir: str | None = None
    evaluation: EvalConfig | None = None
    """None: no before/after measurement."""
    stage: str = "train"
    args: dict[str, Any] = field(default_factory=dict)
    """Recorded in llmopt.json."""


def default_run_dir(output: str | Path) -> Path:
    """OUTPUT.train: checkpoints and metrics live beside the output, not inside it."""
    output = Path(output).expanduser()
    return output.with_name(output.name + ".train")


def _measure(model, tokenizer, evaluation: EvalConfig | None, folder=None) -> dict | None:
    from llmopt.evaluate.summary import evaluate_model

    if evaluation is None:
        return None
    model.eval()
    return evaluate_model(model, tokenizer, evaluation, folder=folder)


def preflight(spec: StageSpec, processes: int) -> None:
    """Check a stage in the launching process, before `--nproc` starts the workers.

    torchrun reports any worker failure as its own exit status 1, so the user
    errors it can see here are caught here, with status 2 and one line: the
    output folder, the precision, the data against the step size, the resume
    checkpoint's configuration. (It also leaves the tokenised data cached.)

    Raises:
        BadInput: as `run_train_stage` would.
    """
    from llmopt.errors import BadInput
    from llmopt.models import load_tokenizer
    from llmopt.outputs import check_output
    from llmopt.runtime import pick_device
    from llmopt.train import checkpoint as ckpt
    from llmopt.train.config import check_batch
    from llmopt.train.data import build_source
    from llmopt.train.precision import resolve_precision

    cfg = spec.config
    check_output(spec.output, spec.overwrite)
    resolve_precision(cfg.precision, pick_device(cfg.device))
    tokenizer = load_tokenizer(spec.model)
    data = build_source(spec.data, tokenizer, cfg.seq_len, cfg.pack, cfg.seed, spec.text_field)
    check_batch(cfg, len(data), processes)
    if cfg.resume:
        path = ckpt.find_checkpoint(cfg.resume)
        meta = ckpt.read_meta(path)
        problems = cfg.resume_mismatches(meta["config"])
        if meta["world_size"] != processes:
            problems.append(f"processes: {meta['world_size']} in the checkpoint, {processes} now")
        if problems:
            raise BadInput(f"--resume {path}: incompatible ({'; '.join(problems)})")


def run_train_stage(
    spec: StageSpec,
    objective: Objective | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    finalize: Callable[[dict[str, Any], Path], None] | None = None,
) -> dict[str, Any] | None:
    """Train `spec.model` on `spec.data` and write `spec.output` (process 0).

    `finalize(metrics, folder)` lets the caller add its own facts to the
    record while the output is still the temporary folder, so llmopt.json is
    complete when the folder appears.

    Returns the record's metrics on process 0 (None on the others).

    Raises:
        BadInput: bad output folder, data, sizes, precision or resume checkpoint,
            all found before training starts.
        TrainingInterrupted: Ctrl-C; a checkpoint was saved in the run folder.
    """
    import torch

    from llmopt.models import load_model, load_tokenizer
    from llmopt.outputs import check_output, save_checkpoint, staged_output
    from llmopt.provenance import start_record, write_record
    from llmopt.train.data import build_source
    from llmopt.train.precision import resolve_precision
    from llmopt.train.trainer import Trainer, set_activation_checkpointing

    cfg = spec.config
    world, device = dist_util.init_world(cfg.device)
    check_output(spec.output, spec.overwrite)
    resolve_precision(cfg.precision, device)
    run_dir = Path(spec.run_dir).expanduser() if spec.run_dir else default_run_dir(spec.output)
    record = start_record(spec.stage, spec.model, spec.args, seed=cfg.seed)
    tokenizer = load_tokenizer(spec.model)
    # Process 0 tokenises (and caches) first so the others read the cache, not race it.
    if not world.is_main:
        dist_util.barrier()
    data = build_source(spec.data, tokenizer, cfg.seq_len, cfg.pack, cfg.seed, spec.text_field)
    if world.is_main:
        dist_util.barrier()
    torch.manual_seed(cfg.seed)
    model = load_model(spec.model, dtype=torch.float32)
    trainer = Trainer(model, cfg, data, objective, callbacks, run_dir, spec.model)
    trainer.validate()  # resume and batch checks before the (slow) first measurement
    before = _measure(model, tokenizer, spec.evaluation) if world.is_main else None
    dist_util.barrier()
    result = trainer.fit()
    if not world.is_main:
        dist_util.close_world()
        return None
    trained = result.model
    if trained is None:  # FSDP: rebuild a plain model from the gathered full weights
        trained = load_model(spec.model, dtype=torch.float32)
        missing, unexpected = trained.load_state_dict(result.state_dict, strict=False)
        if unexpected or any(k not in _tied_keys(trained) for k in missing):
            raise RuntimeError(f"FSDP export: missing {missing}, unexpected {unexpected}")
    trained.to(device)
    if hasattr(trained, "config"):
        trained.config.use_cache = True
    if cfg.grad_checkpointing:
        set_activation_checkpointing(trained, False)
    record.metrics["train"] = {**result.summary, "run_dir": str(run_dir)}
    with staged_output(spec.output, spec.overwrite) as tmp:
        save_checkpoint(trained, tokenizer, tmp, record)
        if (run_dir / METRICS_FILE).is_file():
            shutil.copy2(run_dir / METRICS_FILE, tmp / METRICS_FILE)
        if spec.evaluation is not None:
            record.metrics["before"] = before
            record.metrics["after"] = _measure(trained, tokenizer, spec.evaluation, folder=tmp)
        if finalize is not None:
            finalize(record.metrics, tmp)
        write_record(tmp, record)  # again, now with the measurements
    dist_util.close_world()
    return record.metrics


def _tied_keys(model) -> set[str]:
    """State-dict keys that alias another parameter (a tied head), so may be absent."""
    seen: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.update({name, seen[id(param)]})
        seen.setdefault(id(param), name)
    return tied
