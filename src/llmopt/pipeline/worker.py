"""The entry point of each torchrun worker: `python -m llmopt.pipeline.worker SPEC.json`.

Workers report how they ended in a small JSON file per process (`outcome`
in the spec, suffixed with the rank) and exit with status 0 whenever they
ended in a way llmopt understands (done, bad input, interrupted, a failure
with a message): the launcher reads the files and raises the same error as a
single process would, so bad input is still exit 2 with one line, and
torchrun, which would print its own multi-line report for any non-zero
worker, has nothing to report. A worker that dies (a signal, the OOM killer)
leaves no file, and the launcher reports torchrun's status.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def outcome_path(base: str | Path, rank: int) -> Path:
    """Where process `rank` writes its outcome."""
    return Path(f"{base}.{rank}")


def _outcome(spec: dict[str, Any]) -> dict[str, Any]:
    from llmopt.errors import BadInput
    from llmopt.pipeline.runner import run_stage
    from llmopt.train.outcome import TrainingInterrupted

    try:
        run_stage(
            spec["stage"],
            spec["model"],
            spec["output"],
            spec["config"],
            overwrite=spec["overwrite"],
        )
        return {"kind": "done"}
    except BadInput as err:
        return {"kind": "bad_input", "message": str(err)}
    except TrainingInterrupted as stop:
        checkpoint = str(stop.checkpoint) if stop.checkpoint else None
        return {"kind": "interrupted", "step": stop.step, "checkpoint": checkpoint}
    except Exception as err:
        if os.environ.get("LLMOPT_DEBUG"):
            traceback.print_exc()
        return {"kind": "failed", "message": f"{type(err).__name__}: {err}"}


def main(argv: list[str] | None = None) -> int:
    """Run the stage described by the JSON file named in `argv`; returns the exit status."""
    from llmopt.models.compat import quiet_transformers

    quiet_transformers()
    if os.environ.get("LLMOPT_DEBUG"):  # `kill -USR1 PID` prints where a stuck worker is
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    outcome = _outcome(spec)
    rank = int(os.environ.get("RANK", "0"))
    outcome_path(spec["outcome"], rank).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written; skip the interpreter's teardown, whose destruction of a
    # gloo process group can deadlock (see `llmopt.train.distributed.close_world`).
    os._exit(code)
