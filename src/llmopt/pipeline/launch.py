"""Run a stage as several local processes through torchrun.

The launching process has already checked everything (exit status 2 for bad
input comes from it, not from a worker); it then writes the stage, its input,
its output and its validated config to a small JSON file and starts
`torchrun -m llmopt.pipeline.worker FILE`. Every worker calls `run_stage`
with the same arguments; process 0 saves. The launcher holds the output's
lock for the whole run, and tells the workers so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from llmopt.stage import StageConfig

LOCK_ENV = "LLMOPT_OUTPUT_LOCKED"


def inside_workers() -> bool:
    """True inside a process that torchrun (or another launcher) started."""
    from llmopt.train.distributed import launched_by_torchrun

    return launched_by_torchrun()


def lock_held_by_launcher() -> bool:
    """True in a worker whose launcher holds the output's lock."""
    return inside_workers() and os.environ.get(LOCK_ENV) == "1"


def run_workers(
    stage: str, model: str, dest: Path, config: StageConfig, overwrite: bool, processes: int
) -> None:
    """Run `stage` as `processes` workers and wait for them.

    Ctrl-C reaches the workers (they share the terminal's process group); this
    process ignores it while it waits, so that torchrun is not killed before
    the workers have saved their checkpoint. A SIGTERM sent to this process
    alone (a scheduler's) is passed on to torchrun, which passes it to the
    workers: they save and stop as on Ctrl-C.

    Raises:
        BadInput: a worker found bad input (the same one line as one process).
        TrainingInterrupted: the workers stopped on Ctrl-C or SIGTERM.
        StageFailed: the workers failed.
    """
    from llmopt.pipeline.runner import StageFailed

    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.launch-", dir=dest.parent))
    spec_path, outcome = scratch / "spec.json", scratch / "outcome"
    spec_path.write_text(
        json.dumps(
            {
                "stage": stage,
                "model": model,
                "output": str(dest),
                "overwrite": overwrite,
                "config": config.model_dump(mode="json"),
                "outcome": str(outcome),
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "llmopt.pipeline.worker",
        str(spec_path),
    ]
    env = dict(os.environ)
    env[LOCK_ENV] = "1"
    # One thread per process on a CPU run unless the user chose otherwise (torchrun
    # otherwise prints a banner about it); tokenizers' thread pool and forked workers
    # do not mix, and the data is cached anyway.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = _wait(subprocess.Popen(command, env=env))
        outcomes = [
            json.loads(p.read_text()) for p in sorted(scratch.glob("outcome.*")) if p.is_file()
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _raise_outcome(stage, outcomes, code, processes, StageFailed)


def _wait(process: subprocess.Popen) -> int:
    """Wait for torchrun, ignoring Ctrl-C here and passing SIGTERM on to it."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _raise_outcome(stage: str, outcomes: list[dict], code: int, processes: int, failed) -> None:
    """Raise what the workers ended with (the first process's report first)."""
    from llmopt.errors import BadInput
    from llmopt.train.outcome import TrainingInterrupted

    for kind in ("bad_input", "interrupted", "failed"):
        for outcome in outcomes:
            if outcome["kind"] != kind:
                continue
            if kind == "bad_input":
                raise BadInput(outcome["message"])
            if kind == "interrupted":
                checkpoint = Path(outcome["checkpoint"]) if outcome["checkpoint"] else None
                raise TrainingInterrupted(int(outcome["step"]), checkpoint)
            raise failed(f"{stage}: a worker failed: {outcome['message']}")
    if code != 0 or len(outcomes) < processes:
        raise failed(
            f"{stage}: {processes - len(outcomes)} of {processes} worker processes died "
            f"(torchrun exit status {code})"
        )
