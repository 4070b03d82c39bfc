"""The entry point of each torchrun worker: `python -m llmopt.pipeline.worker SPEC.json`.

Exit status: 0 done, 2 bad input, 130 interrupted (a checkpoint was saved;
process 0 leaves a marker beside the output so the launcher can say where),
1 failure. Only process 0 prints errors: the others would print the same line.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the stage described by the JSON file named in `argv`; returns the exit status."""
    from llmopt.errors import BadInput
    from llmopt.models.compat import quiet_transformers
    from llmopt.pipeline.runner import run_stage
    from llmopt.train.trainer import TrainingInterrupted

    quiet_transformers()
    if os.environ.get("LLMOPT_DEBUG"):  # `kill -USR1 PID` prints where a stuck worker is
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        run_stage(
            spec["stage"],
            spec["model"],
            spec["output"],
            spec["config"],
            overwrite=spec["overwrite"],
        )
        return 0
    except BadInput as err:
        if main_process:
            print(f"llmopt {spec['stage']}: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        if main_process:
            dest = Path(spec["output"])
            marker = dest.parent / f".{dest.name}.interrupted"
            checkpoint = str(stop.checkpoint) if stop.checkpoint else None
            marker.write_text(json.dumps({"step": stop.step, "checkpoint": checkpoint}))
        return 130
    except Exception as err:
        if os.environ.get("LLMOPT_DEBUG"):
            traceback.print_exc()
        elif main_process:
            print(f"llmopt {spec['stage']}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written; skip the interpreter's teardown, whose destruction of a
    # gloo process group can deadlock (see `llmopt.train.distributed.close_world`).
    os._exit(code)
