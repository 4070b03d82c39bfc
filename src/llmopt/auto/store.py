"""The state of a search, kept by Optuna in DIR/search.db (SQLite), so it can be resumed.

Round 0 is the Optuna study `screen`: its sampler (TPE; multi-objective TPE
with --pareto) proposes the candidates, and each finished trial holds the
candidate and its outcome as user attributes. Later rounds are the studies
`round-1`, `round-2`, ...: their candidates are not sampled but promoted, so
their trials are added whole once a candidate's round is done. A resumed search
reads what is done from these studies and starts only what is not.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from llmopt.errors import BadInput

DATABASE = "search.db"


def quiet_optuna():
    """optuna, with its info logging and its experimental-feature warnings silenced."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's multivariate/group modes and constraints are marked experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class Store:
    """The studies of one search folder."""

    def __init__(self, folder: Path, settings: dict[str, Any], objectives: int, sampler):
        """Open (or create) the search database in `folder`.

        Args:
            folder: the search's output folder.
            settings: what must not change for a search to be resumed (compared as JSON).
            objectives: 1 (the proxy) or 2 (the proxy and the cost, for --pareto).
            sampler: the screening study's sampler.

        Raises:
            BadInput: the folder holds a search made with other settings.
        """
        optuna = quiet_optuna()
        self.optuna = optuna
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{folder / DATABASE}")
        self.directions = ["minimize"] * objectives
        self.screen = optuna.create_study(
            storage=self.storage,
            study_name="screen",
            sampler=sampler,
            directions=self.directions,
            load_if_exists=True,
        )
        self.settings = json.dumps(settings, sort_keys=True, default=str)
        saved = self.screen.user_attrs.get("settings")
        if saved is not None and saved != self.settings:
            raise BadInput(
                f"--output {folder}: holds a search with other settings "
                f"({_difference(json.loads(saved), settings)}); resume it with the same "
                "model, budget and options, or use another folder"
            )

    def remember_settings(self) -> None:
        """Bind the folder to this search's settings (once its input is measured: a start
        that failed before that, on a bad data source say, binds nothing)."""
        self.screen.set_user_attr("settings", self.settings)

    def study(self, index: int):
        """The study of round `index` (0: the screening study)."""
        if index == 0:
            return self.screen
        return self.optuna.create_study(
            storage=self.storage,
            study_name=f"round-{index}",
            directions=self.directions,
            load_if_exists=True,
        )

    def outcomes(self, index: int) -> list[dict[str, Any]]:
        """Every finished outcome of round `index`, one per candidate, in trial order."""
        state = self.optuna.trial.TrialState.COMPLETE
        seen: dict[str, dict[str, Any]] = {}
        for trial in self.study(index).get_trials(deepcopy=False, states=(state,)):
            outcome = trial.user_attrs.get("outcome")
            if outcome is not None:
                seen.setdefault(outcome["candidate"], outcome)
        return list(seen.values())

    def failed(self, index: int) -> set[str]:
        """Ids of the candidates that failed in round `index` (not to be run again)."""
        state = self.optuna.trial.TrialState.FAIL
        trials = self.study(index).get_trials(deepcopy=False, states=(state,))
        out = set()
        for trial in trials:
            if "failed" in trial.user_attrs:
                out.add(trial.user_attrs.get("candidate", {}).get("id") or trial.user_attrs["id"])
        return out

    def add_failure(self, index: int, candidate_id: str, reason: str) -> None:
        """Record that a promoted candidate failed in round `index` (>= 1)."""
        state = self.optuna.trial.TrialState.FAIL
        attrs = {"id": candidate_id, "failed": reason}
        self.study(index).add_trial(self.optuna.trial.create_trial(state=state, user_attrs=attrs))

    def candidates(self) -> dict[str, dict[str, Any]]:
        """Every candidate the screening study proposed, by id (its stored form)."""
        out: dict[str, dict[str, Any]] = {}
        for trial in self.screen.get_trials(deepcopy=False):
            data = trial.user_attrs.get("candidate")
            if data is not None:
                out.setdefault(data["id"], data)
        return out

    def fail_stale(self) -> list[dict[str, Any]]:
        """Mark the trials a killed process left running as failed; returns their params,
        to be proposed again (their finished stages are reused from the run folder)."""
        state = self.optuna.trial.TrialState
        stale = self.screen.get_trials(deepcopy=False, states=(state.RUNNING,))
        for trial in stale:
            self.screen.tell(trial.number, state=state.FAIL)
        return [dict(t.params) for t in stale]

    def add(self, index: int, outcome: dict[str, Any], values: list[float]) -> None:
        """Record a promoted candidate's outcome in round `index` (>= 1)."""
        trial = self.optuna.trial.create_trial(values=values, user_attrs={"outcome": outcome})
        self.study(index).add_trial(trial)


def _difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    now = json.loads(json.dumps(now, default=str))
    keys = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    if not keys:
        return "unknown"
    key = keys[0]
    return f"{key}: {saved.get(key)!r} there, {now.get(key)!r} now"
