"""`run_stage`: the one function that runs any stage, for the CLI, recipes, the API and search.

Order, and why:

1. the config is validated and every cheap check runs (the output folder, the
   requested format, the stage's own `check` on config.json), so bad input
   fails in a second, before anything is loaded or written;
2. a stage that runs as several processes is launched here, once the checks
   passed in this process, so bad input still exits with status 2;
3. the model is loaded in whatever format it was written and refused if any
   weight is NaN or infinite, `prepare` loads the data and the checks that
   need the model, and only then the input is measured (seconds to minutes);
4. `apply`; the result is refused if any weight is NaN or infinite (nothing is
   written); it is saved by its format into a temporary folder, measured there
   (so bytes on disk are real), recorded, and renamed into place.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from llmopt.config import build
from llmopt.errors import BadInput
from llmopt.evaluate.summary import EvalConfig, evaluate_model
from llmopt.outputs import check_output, list_files, output_lock, staged_output
from llmopt.pipeline.formats import check_requested_format, choose_format, load_checkpoint
from llmopt.pipeline.formats import open_source as open_model_source
from llmopt.provenance import start_record, write_record
from llmopt.stage import (
    MeasureSettings,
    ModelSource,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
)

SAMPLE_TOKENS = 24


class StageFailed(RuntimeError):
    """A stage ran but its result cannot be used (non-finite weights, failed workers)."""


@dataclass
class StageOutcome:
    """What a finished stage hands back: where it wrote and its llmopt.json record."""

    output: Path | None
    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("metrics", {})


def stage_class(stage: str | type[Stage]) -> type[Stage]:
    """The stage class registered under a name (or the class itself).

    Raises:
        BadInput: no stage has that name.
    """
    from llmopt.errors import did_you_mean
    from llmopt.pipeline.registry import STAGES

    if isinstance(stage, type):
        return stage
    if stage not in STAGES:
        raise BadInput(
            f"unknown stage {stage!r}{did_you_mean(stage, STAGES)}; known: {', '.join(STAGES)}"
        )
    return STAGES[stage]


def make_config(cls: type[Stage], config: Any = None, **values: Any) -> StageConfig:
    """A validated config of stage `cls` from an instance, a mapping and/or keywords.

    Raises:
        BadInput: an unknown key or a bad value (the message names it).
    """
    if isinstance(config, cls.config_class):
        return config.model_copy(update=values) if values else config
    if config is not None and not isinstance(config, dict):
        raise BadInput(f"{cls.name}: config must be a mapping or {cls.config_class.__name__}")
    return build(cls.config_class, {**(config or {}), **values}, where=cls.name)


def run_stage(
    stage: str | type[Stage],
    model: str | Path,
    output: str | Path | None = None,
    config: StageConfig | dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    before: dict[str, Any] | None = None,
    **values: Any,
) -> StageOutcome | None:
    """Run one stage: check, load, measure, apply, save atomically, measure, record.

    Args:
        stage: a registered stage name ('prune', 'distill', ...) or a Stage class.
        model: the input: zoo name, folder (any llmopt format) or hub id.
        output: the output folder (stages that write a checkpoint), or the JSON
            file of an `eval`.
        config: the stage's config, or a mapping of its keys; `values` are more keys.
        overwrite: replace an existing output (only once the new one is complete).
        before: the input's measurement when the caller already has it (a recipe
            measured the previous output the same way): it is not measured again.

    Returns:
        The output folder and its record (None on the non-main processes of a
        distributed stage).

    Raises:
        BadInput: any bad input, found before the expensive work.
        StageFailed: the result has non-finite weights, or worker processes failed.
        TrainingInterrupted: Ctrl-C during a training stage (a checkpoint was saved).
    """
    cls = stage_class(stage)
    cfg = make_config(cls, config, **values)
    check_data_sources(cfg)
    source = open_model_source(str(model))
    if not cls.writes_checkpoint:
        return _run_measurement(cls(cfg), source, output)
    if output is None:
        raise BadInput(f"{cls.name}: an output folder is required (--output)")
    protect = (source.folder,) if source.folder is not None else ()
    dest = check_output(output, overwrite, protect)
    job = cls(cfg, dest, overwrite)
    check_requested_format(cfg.save_format, source)
    job.check(source)
    processes = int(getattr(cfg, "nproc", 1))
    from llmopt.pipeline import launch

    if cls.distributed and processes > 1 and not launch.inside_workers():
        with output_lock(dest):
            job.before_launch(_launcher_context(job, source, processes))
            launch.run_workers(cls.name, source.spec, dest, cfg, overwrite, processes)
        return StageOutcome(dest, _read_json(dest / "llmopt.json"))
    if launch.lock_held_by_launcher():
        return _execute(job, source, dest, overwrite, before)
    with output_lock(dest):
        return _execute(job, source, dest, overwrite, before)


def _execute(
    job: Stage, source: ModelSource, dest: Path, overwrite: bool, before: dict | None
) -> StageOutcome | None:
    cfg, name = job.config, job.name
    seed = getattr(cfg, "seed", None)
    record = start_record(name, source.spec, cfg.model_dump(mode="json"), seed)
    ctx = _context(job, source, dest)
    tokenizer = _load_tokenizer(source)
    model = _load_input(job, source, ctx)
    job.prepare(model, tokenizer, ctx)
    eval_config = _eval_config(job, model)
    if eval_config is not None and before is None and ctx.is_main:
        _say(cfg, f"{name}: measuring the input")
        before = evaluate_model(model, tokenizer, eval_config, folder=source.folder)
    _barrier(job)
    result = job.apply(model, tokenizer, ctx)
    if not ctx.is_main:
        _close(job)
        return None
    if result.model is None:
        raise StageFailed(f"{name}: produced no model")
    _check_finite(result.model, name)
    requested = cfg.save_format or job.output_format
    fmt = choose_format(result.model, requested, source.format)
    with staged_output(dest, overwrite) as tmp:
        record.format, facts = fmt.save(result.model, tmp, requested)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if facts:
            result.metrics.setdefault("storage", facts)
        job.finalize(result.model, tmp, result)
        metrics: dict[str, Any] = {"before": before} if eval_config is not None else {}
        metrics.update(result.metrics)
        if eval_config is not None:
            _say(cfg, f"{name}: measuring the output")
            metrics["after"] = evaluate_model(result.model, tokenizer, eval_config, folder=tmp)
        record.metrics = metrics
        record.files = list_files(tmp)
        write_record(tmp, record)
    _close(job)
    return StageOutcome(dest, record.to_dict())


def _context(job: Stage, source: ModelSource, dest: Path | None) -> StageContext:
    from llmopt.runtime import pick_device

    def measure(model: nn.Module, tokenizer) -> dict[str, Any] | None:
        eval_config = _eval_config(job, model)
        return None if eval_config is None else evaluate_model(model, tokenizer, eval_config)

    if job.distributed:
        from llmopt.train.distributed import init_world

        world, device = init_world(job.config.device)
        return StageContext(
            source, dest, device, load_checkpoint, measure, world.is_main, world.world_size
        )
    return StageContext(source, dest, pick_device(job.config.device), load_checkpoint, measure)


def _launcher_context(job: Stage, source: ModelSource, processes: int) -> StageContext:
    """The context of the launching process: one process, before the workers exist."""
    from dataclasses import replace

    return replace(_context(job, source, job.output), processes=processes)


def _barrier(job: Stage) -> None:
    if job.distributed:
        from llmopt.train.distributed import barrier

        barrier()


def _close(job: Stage) -> None:
    if job.distributed:
        from llmopt.train.distributed import close_world

        close_world()


def _load_input(job: Stage, source: ModelSource, ctx: StageContext) -> nn.Module:
    """The input model, refused when a weight is NaN or infinite (before any work uses it)."""
    from llmopt.models.validate import check_finite_weights

    model = load_checkpoint(source, device=job.load_device(ctx.device))
    check_finite_weights(model, source.spec)
    return model


def check_data_sources(cfg: StageConfig) -> None:
    """Cheap checks of every data source a stage config names, before any model is loaded.

    The sources are the fields every stage uses for them: `data` (training,
    evaluation), `calib_data` (calibration) and the measurement's `eval.data`.

    Raises:
        BadInput: a source that does not exist, is not what its name says, or
            lacks the text field (see `llmopt.data.sources.check_source`).
    """
    from llmopt.data.sources import check_source

    text_field = getattr(cfg, "text_field", "text")
    for key in ("data", "calib_data"):
        spec = getattr(cfg, key, None)
        if isinstance(spec, str):
            check_source(spec, text_field)
    settings = getattr(cfg, "eval", None)
    if isinstance(settings, MeasureSettings) and settings.enabled:
        check_source(settings.data, settings.text_field)


def _load_tokenizer(source: ModelSource):
    from llmopt.models import load_tokenizer

    return load_tokenizer(source.spec)


def _eval_config(job: Stage, model: nn.Module) -> EvalConfig | None:
    """The before/after measurement of a stage (None when it is switched off)."""
    from llmopt.models.arch import ArchAdapter

    settings = job.config.eval
    if not settings.enabled:
        return None
    positions = ArchAdapter(model).max_positions
    seq_len = settings.seq_len or job.measure_seq_len(positions)
    return build(
        EvalConfig,
        where=f"{job.name} measurement",
        data=settings.data,
        text_field=settings.text_field,
        seq_len=seq_len,
        max_tokens=settings.max_tokens,
        speed=settings.speed,
        sample_tokens=SAMPLE_TOKENS if settings.sample else 0,
        progress=job.config.progress,
    )


def _check_finite(model: nn.Module, stage: str) -> None:
    from llmopt.models.validate import first_nonfinite

    name = first_nonfinite(model)
    if name is not None:
        raise StageFailed(
            f"{stage}: the result has non-finite weights ({name}); nothing was written"
        )


def _run_measurement(job: Stage, source: ModelSource, output: str | Path | None) -> StageOutcome:
    """A stage that writes no checkpoint (eval): measure, and write JSON if asked."""
    from llmopt.outputs import write_text_atomic

    target = _check_json_target(output) if output is not None else None
    job.check(source)
    ctx = _context(job, source, None)
    tokenizer = _load_tokenizer(source)
    model = _load_input(job, source, ctx)
    job.prepare(model, tokenizer, ctx)
    result: StageResult = job.apply(model, tokenizer, ctx)
    record = {"stage": job.name, "model": source.spec, "metrics": result.metrics}
    if target is not None:
        text = json.dumps({"model": source.spec, **result.metrics}, indent=2, default=str)
        write_text_atomic(target, text + "\n")
    return StageOutcome(target, record)


def _check_json_target(output: str | Path) -> Path:
    from llmopt.outputs import check_parent

    target = Path(output).expanduser().resolve()
    if target.is_dir():
        raise BadInput(f"--json {target}: is a folder")
    check_parent(target, "--json")
    return target


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _say(cfg: StageConfig, message: str) -> None:
    if cfg.progress:
        print(message, file=sys.stderr, flush=True)
