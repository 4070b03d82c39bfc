"""`llmopt run`: the stages of a recipe, in-process, into one run folder, resumable.

A run folder holds `recipe.yaml` (the effective recipe), `run.json` (the state
of every stage), one output folder per stage (and `NAME.train` for training
stages) and, at the end, `report.md` / `report.html`. Each stage has a digest:
its kind, its config and the digests of the outputs it reads. Run again, a
stage whose output is complete and whose digest is unchanged is reused; the
first one that is not is run (a training stage interrupted in the same
configuration resumes from its newest checkpoint); a changed stage changes the
digest of everything after it, so they are redone too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmopt.errors import BadInput
from llmopt.outputs import output_lock, write_text_atomic
from llmopt.pipeline.recipe import INPUT, Recipe, RecipeStage, load_recipe
from llmopt.provenance import read_record
from llmopt.stage import MeasureSettings

RUN_STATE = "run.json"
RECIPE_COPY = "recipe.yaml"


@dataclass
class StageRun:
    """What happened to one stage of a run."""

    name: str
    kind: str
    output: Path
    status: str
    """'ran', 'resumed' or 'reused'."""
    record: dict[str, Any]


@dataclass
class RunResult:
    """A finished run: its folder, every stage, and the report (if one was written)."""

    folder: Path
    stages: list[StageRun] = field(default_factory=list)
    report: Path | None = None


def default_run_folder(recipe_path: Path) -> Path:
    """runs/<recipe name> in the current folder."""
    return Path("runs") / recipe_path.stem


def run_recipe(
    recipe: Recipe | str | Path,
    output: str | Path | None = None,
    *,
    sets: list[str] | tuple[str, ...] = (),
    model: str | None = None,
    report: bool = True,
    say: Callable[[str], None] | None = None,
    input_measurement: tuple[MeasureSettings, dict[str, Any]] | None = None,
) -> RunResult:
    """Run (or resume) every stage of a recipe into one folder.

    Args:
        recipe: a validated recipe, or the path of a YAML file.
        output: the run folder (default: runs/<recipe name>).
        sets: `NAME.key=value` overrides (only with a path).
        model: overrides the recipe's input model (only with a path).
        report: write report.md and report.html at the end.
        say: where progress lines go (default: stderr).
        input_measurement: (settings, metrics): the input model measured with these
            settings, when the caller has it already (a search runs many recipes from
            one input); stages that read the input with the same settings reuse it.

    Raises:
        BadInput: a bad recipe (before any stage runs), a run folder that is not
            one, or any stage's bad input.
        StageFailed, TrainingInterrupted: from a stage; the run can be resumed.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, sets, model)
    _check_data(recipe)
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    folder = Path(output or default_run_folder(recipe.path)).expanduser().resolve()
    _check_run_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = RunResult(folder)
    with output_lock(folder):
        write_text_atomic(folder / RECIPE_COPY, yaml.safe_dump(recipe.raw, sort_keys=False))
        state = _read_state(folder)
        digests: dict[str, str] = {INPUT: _digest({"model": recipe.model})}
        measured: dict[str, tuple[str, dict]] = {}
        if input_measurement is not None:
            settings, metrics = input_measurement
            measured[INPUT] = (_eval_key(settings), metrics)
        for index, stage in enumerate(recipe.stages, 1):
            result.stages.append(
                _run_one(recipe, stage, folder, state, digests, measured, index, say)
            )
        if report:
            from llmopt.report import write_report

            result.report = write_report([folder], folder / "report.md")
    return result


def _run_one(
    recipe: Recipe,
    stage: RecipeStage,
    folder: Path,
    state: dict[str, Any],
    digests: dict[str, str],
    measured: dict[str, tuple[str, dict]],
    index: int,
    say: Callable[[str], None],
) -> StageRun:
    from llmopt.pipeline.runner import run_stage

    total = len(recipe.stages)
    resolve = _resolver(recipe, folder)
    digest = _digest(
        {
            "kind": stage.kind,
            "config": stage.config.model_dump(mode="json"),
            "inputs": {key: digests[ref] for key, ref in _references(stage).items()},
        }
    )
    digests[f"@{stage.name}"] = digest
    output = folder / stage.name
    previous = state["stages"].get(stage.name, {})
    eval_key = _eval_key(stage.config.eval)
    if previous.get("digest") == digest and previous.get("status") == "done":
        record = read_record(output)
        if record is not None:
            say(f"[{index}/{total}] {stage.name}: done earlier with the same config, reused")
            measured[f"@{stage.name}"] = (eval_key, record.get("metrics", {}).get("after"))
            return StageRun(stage.name, stage.kind, output, "reused", record)
    config = stage.config.model_copy(
        update={key: resolve(ref) for key, ref in stage.references.items()}
    )
    status = "ran"
    run_dir = output.with_name(output.name + ".train")
    if hasattr(config, "resume") and run_dir.exists():
        if previous.get("digest") == digest and _has_checkpoint(run_dir) and not config.resume:
            config = config.model_copy(update={"resume": str(run_dir / "checkpoints")})
            status = "resumed"
        elif not config.resume:
            shutil.rmtree(run_dir)  # a run of another config: this run folder owns it
    state["stages"][stage.name] = {"digest": digest, "status": "started", "kind": stage.kind}
    _write_state(folder, state)
    say(f"[{index}/{total}] {stage.kind} {stage.name} <- {stage.model}" + _note(status))
    before = measured.get(stage.model)
    outcome = run_stage(
        stage.kind,
        resolve(stage.model),
        output,
        config,
        overwrite=True,
        before=before[1] if before and before[0] == eval_key and before[1] else None,
    )
    assert outcome is not None
    metrics = outcome.metrics
    if stage.model not in measured and metrics.get("before"):
        measured[stage.model] = (eval_key, metrics["before"])
    measured[f"@{stage.name}"] = (eval_key, metrics.get("after"))
    state["stages"][stage.name] = {"digest": digest, "status": "done", "kind": stage.kind}
    _write_state(folder, state)
    return StageRun(stage.name, stage.kind, output, status, outcome.record)


def _check_data(recipe: Recipe) -> None:
    """Every stage's data sources, before the first stage runs (not when stage 3 starts).

    Raises:
        BadInput: a source that does not exist or is not what its name says.
    """
    from llmopt.pipeline.runner import check_data_sources

    for stage in recipe.stages:
        check_data_sources(stage.config)


def _eval_key(settings: MeasureSettings) -> str:
    """Two measurements are interchangeable when their settings are equal."""
    return json.dumps(settings.model_dump(mode="json"), sort_keys=True)


def _note(status: str) -> str:
    return "  (resuming from its newest checkpoint)" if status == "resumed" else ""


def _references(stage: RecipeStage) -> dict[str, str]:
    refs = {"model": stage.model, **stage.references}
    return {key: ref for key, ref in refs.items() if ref.startswith("@")}


def _resolver(recipe: Recipe, folder: Path) -> Callable[[str], str]:
    def resolve(ref: str) -> str:
        if ref == INPUT:
            return recipe.model
        if ref.startswith("@"):
            return str(folder / ref[1:])
        return ref

    return resolve


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _has_checkpoint(run_dir: Path) -> bool:
    from llmopt.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir / "checkpoints"))


def _check_run_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--output {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / RUN_STATE).is_file():
        raise BadInput(f"--output {folder}: exists, is not empty and is not an llmopt run folder")


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / RUN_STATE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{path}: corrupt run state; remove it to start the run afresh") from None
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise BadInput(f"{path}: corrupt run state; remove it to start the run afresh")
    return state


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    write_text_atomic(folder / RUN_STATE, json.dumps(state, indent=2) + "\n")
