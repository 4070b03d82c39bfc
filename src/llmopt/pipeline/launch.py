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
    the workers have saved their checkpoint.

    Raises:
        TrainingInterrupted: the workers stopped on Ctrl-C (exit status 130).
        StageFailed: the workers failed.
    """
    from llmopt.pipeline.runner import StageFailed

    fd, spec_path = tempfile.mkstemp(
        prefix=f".{dest.name}.launch-", suffix=".json", dir=dest.parent
    )
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {
                "stage": stage,
                "model": model,
                "output": str(dest),
                "overwrite": overwrite,
                "config": config.model_dump(mode="json"),
            },
            handle,
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "llmopt.pipeline.worker",
        spec_path,
    ]
    env = dict(os.environ)
    env[LOCK_ENV] = "1"
    # One thread per process on a CPU run unless the user chose otherwise (torchrun
    # otherwise prints a banner about it); tokenizers' thread pool and forked workers
    # do not mix, and the data is cached anyway.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = subprocess.call(command, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
        Path(spec_path).unlink(missing_ok=True)
    if code == 0:
        return
    interrupted = _interrupted(dest)
    if interrupted is not None:
        raise interrupted
    raise StageFailed(f"{stage}: {processes} worker processes failed (torchrun exit status {code})")


def _interrupted(dest: Path):
    """A TrainingInterrupted pointing at the newest checkpoint, if the workers saved one."""
    from llmopt.train.trainer import TrainingInterrupted

    marker = dest.parent / f".{dest.name}.interrupted"
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    marker.unlink(missing_ok=True)
    checkpoint = Path(info["checkpoint"]) if info.get("checkpoint") else None
    return TrainingInterrupted(int(info["step"]), checkpoint)
