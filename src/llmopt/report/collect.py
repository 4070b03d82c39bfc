"""The rows of a report: every measured output of one or more runs, in order.

A folder given to the report is a run folder (`llmopt run`: run.json and the
recipe say which stages, in which order), a stage's output folder (one row,
plus its input), or a folder of output folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmopt.errors import BadInput
from llmopt.provenance import read_record


@dataclass
class Entry:
    """One measured model.

    Attributes:
        run: the folder it came from (its name), to tell runs apart.
        name: the output's name; '(input)' for the model a run started from.
        stage: the stage that made it ('input' for the starting model).
        metrics: its measurement (the record's metrics.after, or the input's before).
        record: its llmopt.json (None for the input).
        folder: its checkpoint folder (None for the input).
    """

    run: str
    name: str
    stage: str
    format: str
    metrics: dict[str, Any]
    record: dict[str, Any] | None = None
    folder: Path | None = None

    @property
    def label(self) -> str:
        return self.name if not self.run else f"{self.run}/{self.name}"

    @property
    def wall_time_s(self) -> float | None:
        return None if self.record is None else self.record.get("wall_time_s")


def _stage_names(folder: Path) -> list[str]:
    """The stage folders of a run, in recipe order (or sorted, without a recipe)."""
    recipe = folder / "recipe.yaml"
    if recipe.is_file():
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        stages = data.get("stages") or {}
        if isinstance(stages, dict):
            return [str(name) for name in stages]
    return sorted(p.name for p in folder.iterdir() if (p / "llmopt.json").is_file())


def _entry(run: str, folder: Path, record: dict[str, Any]) -> Entry | None:
    after = (record.get("metrics") or {}).get("after")
    if not after:
        return None
    return Entry(
        run, folder.name, record["stage"], record.get("format", "dense"), after, record, folder
    )


def _input_entry(run: str, records: list[dict[str, Any]]) -> Entry | None:
    for record in records:
        before = (record.get("metrics") or {}).get("before")
        if before and not record.get("history"):  # made straight from the input model
            return Entry(run, f"(input) {record['source']}", "input", "dense", before)
    return None


def collect(folders: list[str | Path]) -> list[Entry]:
    """Every measured output under `folders`, inputs first, then in stage order.

    Raises:
        BadInput: a folder does not exist or holds no llmopt output.
    """
    entries: list[Entry] = []
    several = len(folders) > 1
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise BadInput(f"{folder}: no such folder")
        run = folder.name if several else ""
        if read_record(folder) is not None:
            outputs = [folder]
        else:
            outputs = [folder / name for name in _stage_names(folder)]
        records = [(p, r) for p in outputs if (r := read_record(p)) is not None]
        if not records:
            raise BadInput(f"{folder}: holds no llmopt output (no llmopt.json)")
        first = _input_entry(run, [r for _, r in records])
        if first is not None:
            entries.append(first)
        entries += [e for p, r in records if (e := _entry(run, p, r)) is not None]
    return entries


def loss_curve(entry: Entry) -> list[dict[str, float]]:
    """The metrics.jsonl rows of a training or distillation output (empty otherwise)."""
    if entry.folder is None or not (entry.folder / "metrics.jsonl").is_file():
        return []
    rows = []
    for line in (entry.folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def pareto_front(entries: list[Entry], x: str = "weight_bytes", y: str = "perplexity") -> set[int]:
    """Indices of the entries no other entry beats on both x and y (smaller is better)."""
    points = [
        (i, e.metrics.get(x), e.metrics.get(y))
        for i, e in enumerate(entries)
        if e.metrics.get(x) is not None and e.metrics.get(y) is not None
    ]
    front = set()
    for i, xi, yi in points:
        dominated = any(
            (xj <= xi and yj <= yi) and (xj < xi or yj < yi) for j, xj, yj in points if j != i
        )
        if not dominated:
            front.add(i)
    return front
