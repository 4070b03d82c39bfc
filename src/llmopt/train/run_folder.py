"""A run folder belongs to one run.

A training stage's run folder (`OUTPUT.train`, or `--run-dir`) holds its
checkpoints, `metrics.jsonl` and TensorBoard logs. Two runs must never share
one: a new run would truncate the old run's metrics, and its checkpoints
would interleave with the old ones, so that `--resume RUN` (the newest
checkpoint) could continue the wrong run. So, decided from the folder alone
before any model is loaded (`plan_run_folder`):

- a fresh run into a folder that holds an earlier run's checkpoints or
  metrics is refused, unless `--overwrite` (then that run is removed, once
  every check has passed: `RunFolderPlan.execute`);
- `--resume` of a checkpoint in this folder continues that run; if the folder
  holds later checkpoints of it (a resume from an earlier step), they are
  dropped only with `--overwrite`;
- `--resume` of a checkpoint in another folder starts this folder afresh (with
  `--overwrite` if it holds a run) and copies the resumed run's metrics up to
  that step, so `metrics.jsonl` reads like one uninterrupted run.

The folder is locked while the run writes it (`llmopt.outputs.output_lock`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmopt.errors import BadInput
from llmopt.train.checkpoint import PREFIX, checkpoint_step, list_checkpoints
from llmopt.train.tracking import METRICS_FILE

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


def earlier_run(run_dir: Path) -> str | None:
    """What an earlier run left in `run_dir` that would be lost ('3 checkpoints, metrics'), or None.

    An empty metrics.jsonl (a run that stopped before its first log) is nothing to lose.
    """
    parts = []
    found = list_checkpoints(run_dir / CHECKPOINTS)
    if found:
        parts.append(f"{len(found)} checkpoint(s) up to {found[-1].name}")
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        parts.append(METRICS_FILE)
    return ", ".join(parts) or None


@dataclass
class RunFolderPlan:
    """What to do to the run folder once every check has passed."""

    run_dir: Path
    clear: bool = False
    """Remove the checkpoints, metrics and TensorBoard logs there (a fresh start)."""
    drop_after: int | None = None
    """Remove this run's checkpoints past this step (a resume from an earlier one)."""
    metrics_from: Path | None = None
    """Copy this metrics.jsonl's rows up to `resumed_step` (a resume of another folder's run)."""
    resumed_step: int = 0

    def execute(self) -> None:
        """Make the folder ready for the run (call with its lock held, before training)."""
        checkpoints = self.run_dir / CHECKPOINTS
        _remove_temporaries(checkpoints)
        # Only what a run writes goes: anything else the user keeps there stays.
        if self.clear:
            for path in list_checkpoints(checkpoints):
                shutil.rmtree(path)
            shutil.rmtree(self.run_dir / TENSORBOARD, ignore_errors=True)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        if self.drop_after is not None:
            for path in list_checkpoints(checkpoints):
                if checkpoint_step(path) > self.drop_after:
                    shutil.rmtree(path)
        if self.metrics_from is not None and self.metrics_from.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rows = _rows_up_to(self.metrics_from, self.resumed_step)
            (self.run_dir / METRICS_FILE).write_text("".join(rows), encoding="utf-8")


def plan_run_folder(
    run_dir: Path, resume: Path | None, resumed_step: int, overwrite: bool
) -> RunFolderPlan:
    """Decide, from the folder alone, whether this run may use `run_dir` and what to remove.

    Args:
        run_dir: the run folder.
        resume: the checkpoint folder being resumed (None: a fresh run).
        resumed_step: its step.
        overwrite: the user allowed replacing what is there.

    Raises:
        BadInput: the folder holds a run this one would mix with or destroy, and
            `overwrite` is off (the message names the folder and both ways out).
    """
    run_dir = run_dir.expanduser().resolve()
    held = earlier_run(run_dir)
    if resume is None:
        if held and not overwrite:
            raise BadInput(
                f"--run-dir {run_dir}: holds an earlier run ({held}); continue it with "
                f"--resume {run_dir}, or pass --overwrite to start afresh"
            )
        return RunFolderPlan(run_dir, clear=True)
    resume = resume.expanduser().resolve()
    if resume.parent == run_dir / CHECKPOINTS:
        later = [p for p in list_checkpoints(resume.parent) if checkpoint_step(p) > resumed_step]
        if later and not overwrite:
            raise BadInput(
                f"--resume {resume}: its run has later checkpoints (up to {later[-1].name}); "
                f"continue from the newest with --resume {run_dir}, or pass --overwrite to "
                "drop them"
            )
        return RunFolderPlan(run_dir, drop_after=resumed_step)
    if held and not overwrite:
        raise BadInput(
            f"--run-dir {run_dir}: holds another run ({held}); resume {resume.name} into an "
            "empty --run-dir, or pass --overwrite to replace that run"
        )
    metrics = resume.parent.parent / METRICS_FILE
    return RunFolderPlan(run_dir, clear=True, metrics_from=metrics, resumed_step=resumed_step)


def _rows_up_to(path: Path, step: int) -> list[str]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: not a row
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(json.dumps(row) + "\n")
    return rows


def _remove_temporaries(checkpoints: Path) -> None:
    """Half-written checkpoints (hidden staging folders) that killed runs left behind."""
    if not checkpoints.is_dir():
        return
    for path in checkpoints.iterdir():
        if path.name.startswith(f".{PREFIX}") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
