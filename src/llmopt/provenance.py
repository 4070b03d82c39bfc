"""`llmopt.json`: what a stage did, written beside the checkpoint it produced.

Every stage writes one record: the stage name, where its model came from, its
arguments, the metrics before and after, the versions and seed, the wall time,
and the records of the stages that made its input (`history`), so the file in
the last folder of a pipeline tells the whole story.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmopt.errors import BadInput
from llmopt.outputs import RECORD_FILE, write_text_atomic


@dataclass
class StageRecord:
    """One stage's provenance. `format` names how the checkpoint is stored."""

    stage: str
    source: str
    args: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    format: str = "dense"
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    wall_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    """Every file the stage wrote into its folder (so --overwrite knows what is llmopt's)."""
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_t0")
        return data


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The record in `folder`, or None if it has none.

    Raises:
        BadInput: the file exists but is not a JSON object.
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInput(f"{path}: corrupt ({err.msg} at line {err.lineno})") from None
    except (UnicodeDecodeError, OSError) as err:
        raise BadInput(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: corrupt (not a JSON object)")
    return data


def start_record(
    stage: str, source: str, args: dict[str, Any], seed: int | None = None
) -> StageRecord:
    """A new record whose history is the source folder's record and its history."""
    from llmopt.runtime import versions

    history: list[dict[str, Any]] = []
    if Path(source).is_dir() and (previous := read_record(source)) is not None:
        history = [*previous.pop("history", []), previous]
    return StageRecord(
        stage=stage,
        source=str(source),
        args=_jsonable(args),
        seed=seed,
        versions=versions(),
        history=history,
    )


def write_record(folder: str | Path, record: StageRecord) -> Path:
    """Write `record` (with its wall time filled in) atomically into `folder`."""
    record.wall_time_s = round(time.perf_counter() - record._t0, 3)
    text = json.dumps(record.to_dict(), indent=2, sort_keys=False, default=str) + "\n"
    return write_text_atomic(Path(folder) / RECORD_FILE, text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
