"""Round 0: screen candidates proposed by Optuna's sampler, cheapest measurement first.

The single-technique candidates (`Space.anchors`) are queued first, so every
search measures them, then the best of them again with block-wise reconstruction
(`refine`); then the sampler (TPE, multi-objective with --pareto)
proposes the rest, learning from the proxy values told so far. A measured
cost over the budget is told to the sampler as a violated constraint. Choices
that describe no candidate (nothing fits the budget that way) are told as
infeasible and cost nothing but a sample; a proposal equal to a candidate already
screened is answered from its outcome, without running it again. A candidate
that a stage refuses or that fails (training diverged) is left out, once.
"""

from __future__ import annotations

from typing import Any

from llmopt.auto import clock
from llmopt.auto.evaluate import CandidateFailed, Context, evaluate
from llmopt.auto.rounds import Round
from llmopt.auto.space import Space
from llmopt.auto.store import Store

NO_FIT = 1e3
"""The value told for choices that describe no candidate (with a violated constraint)."""
ATTEMPTS_PER_TRIAL = 25
"""Proposals per screened candidate before the sampler is taken to have run dry."""


def sampler(seed: int):
    """TPE, grouped and multivariate (the decisions depend on each other); it reads the
    budget as each trial's constraint, and handles two objectives itself (--pareto)."""
    from llmopt.auto.store import quiet_optuna

    optuna = quiet_optuna()
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=5)


def values(outcome: dict[str, Any], pareto: bool) -> list[float]:
    """What the sampler minimises: the proxy, and the cost for --pareto."""
    return [outcome["kl"], outcome["cost"]] if pareto else [outcome["kl"]]


def screen(ctx: Context, store: Store, space: Space, round_: Round, deadline: float | None) -> bool:
    """Screen until `round_.size` distinct candidates are measured; returns False when the
    deadline stopped it first."""
    study = store.screen
    for params in store.fail_stale():
        study.enqueue_trial(params)
    if not study.user_attrs.get("anchors_queued"):
        for params in space.anchors()[: round_.size]:
            study.enqueue_trial(params)
        study.set_user_attr("anchors_queued", True)
    done = {o["candidate"]: o for o in store.outcomes(0)}
    failed = store.failed(0)
    refine(study, space, done, round_.size)
    if ctx.budget.kind == "latency" and done:
        space.latency = latency_model(list(done.values()), space)
    attempts = 0
    while len(done) < round_.size and attempts < ATTEMPTS_PER_TRIAL * round_.size:
        if deadline is not None and clock.now() >= deadline:
            return False
        attempts += 1
        trial = study.ask()
        candidate = space.suggest(trial)
        if candidate is None:
            # No candidate fits these choices: told as infeasible (not failed), so that
            # the sampler learns to stay away from them.
            trial.set_user_attr("fits", False)
            trial.set_constraint("budget", 1.0)
            study.tell(trial, [NO_FIT] * len(study.directions))
            continue
        trial.set_user_attr("candidate", candidate.to_dict())
        if candidate.id in failed:
            study.tell(trial, state=store.optuna.trial.TrialState.FAIL)
            continue
        outcome = done.get(candidate.id)
        fresh = outcome is None
        if fresh:
            try:
                outcome = evaluate(ctx, candidate, round_)
            except CandidateFailed as err:
                failed.add(candidate.id)
                trial.set_user_attr("failed", str(err))
                study.tell(trial, state=store.optuna.trial.TrialState.FAIL)
                ctx.say(f"[screen] failed, left out: {err}")
                continue
            done[candidate.id] = outcome
        trial.set_user_attr("outcome", outcome)
        trial.set_constraint("budget", outcome["cost"] - ctx.budget.fraction)
        study.tell(trial, values(outcome, space.pareto))
        if fresh:  # stored: a resumed search will not run it again
            ctx.log("done", candidate=candidate.id, round=0)
            ctx.say(line(outcome, ctx.budget, f"screen {len(done)}/{round_.size}"))
            refine(study, space, done, round_.size)
        if ctx.budget.kind == "latency":
            space.latency = latency_model(list(done.values()), space)
    return True


REFINED = 2
"""How many of the best anchors are tried again with block-wise reconstruction."""


def refine(study, space: Space, done: dict[str, dict[str, Any]], size: int) -> None:
    """Once every anchor is measured, queue the `REFINED` best (by the proxy) again with
    reconstruction, where the round has room for them and for one sampled trial.

    The single-technique recipes are the strongest candidates known before any is
    measured; a local step from the best of them is likelier to beat them than a
    sample from the whole space (which the sampler explores with the trials left).
    """
    if study.user_attrs.get("refined") or space.pareto:  # a front wants spread, not a peak
        return
    anchors = space.anchors()[:size]
    measured = [(a, done.get(space.build(a).id)) for a in anchors]  # anchors all build
    if any(outcome is None for _, outcome in measured):
        return
    # at least one trial is left to the sampler
    count = min(REFINED, size - len(anchors) - 1)
    best = sorted((o["kl"], i) for i, (_, o) in enumerate(measured) if o["feasible"])
    for _, i in best[: max(count, 0)]:
        study.enqueue_trial({**measured[i][0], "reconstruct": True})
    study.set_user_attr("refined", True)


def latency_model(outcomes: list[dict[str, Any]], space: Space):
    """The latency model refitted to every measured candidate."""
    from llmopt.auto.latency import LatencyModel

    layers, params = space.original.layers, space.sizer.counter.total
    return LatencyModel.fit(
        [
            (o["layers"] / layers, o["metrics"]["unique_params"] / params, o["cost"])
            for o in outcomes
        ]
    )


def line(outcome: dict[str, Any], budget, where: str) -> str:
    """One progress line: where, the candidate, its cost against the budget, KL, perplexity."""
    mark = "ok" if outcome["feasible"] else "OVER"
    return (
        f"[{where}] {outcome['candidate']} {outcome['label']}: {budget.kind} "
        f"{outcome['cost']:.3f} ({mark}), KL {outcome['kl']:.4f}, "
        f"ppl {outcome['perplexity']:.2f}, {outcome['wall_s']:.0f} s"
    )
