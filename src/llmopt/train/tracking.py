"""Where training metrics go: a JSONL file, TensorBoard when installed, a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append metric rows to `run_dir/metrics.jsonl` (and TensorBoard if importable).

    On resume the rows after the resumed step are dropped first, so the file
    reads like one uninterrupted run.
    """

    def __init__(self, run_dir: Path | None, enabled: bool = True, resumed_step: int = 0) -> None:
        """Takes the run folder (None: log nowhere), whether this process logs, the start step."""
        self.path = run_dir / METRICS_FILE if run_dir is not None and enabled else None
        self._tb = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.is_file() and resumed_step > 0:
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
            kept = [r for r in rows if r.get("step", 0) <= resumed_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)
        except ImportError:  # tensorboard is optional
            self._tb = None

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (a dict with a 'step')."""
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()


class ProgressBar:
    """A tqdm bar over steps showing loss, lr and tokens/s; tqdm's ETA comes free."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        """Takes the total steps, the step it starts at, and whether to draw it."""
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, tokens: int, seconds: float) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def show(self, row: dict[str, Any]) -> None:
        """Put the latest logged values on the bar."""
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{row['loss']:.4f}",
                lr=f"{row['lr']:.2e}",
                tok_s=f"{row['tokens_per_s']:,.0f}",
                refresh=False,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
