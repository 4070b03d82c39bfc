"""`auto_search`: the best model under a budget, the recipe that makes it, and why.

1. Cheap checks first: the budget, the output folder, and whether any candidate
   of the space can meet the budget at all (counted from config.json).
2. The input is measured once, the same way every stage measures its output,
   and its next-token distributions on held-out tokens are kept for the proxy.
3. Round 0 screens candidates right after their calibration-only stages
   (`llmopt.auto.screen`); successive-halving rounds give the most promising
   ones growing recovery and proxy budgets; the finalists get the full recovery
   and the one with the lowest held-out perplexity wins (`llmopt.auto.finish`).
4. The output folder keeps the Optuna studies, every candidate's recipe and the
   run folders of the candidates still in the search, so a search started again
   with the same command resumes where it stopped; --time-limit stops starting
   new work and returns the best feasible model found so far. A candidate's run
   folder (a checkpoint per stage) goes once the candidate is out of the search
   (--keep-candidates keeps them all): a 135M model's search made 18 GB of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.auto import clock
from llmopt.auto.budget import Budget, parse_budget
from llmopt.auto.candidate import Candidate
from llmopt.auto.config import AutoConfig
from llmopt.auto.evaluate import CandidateFailed, Context, discard, evaluate
from llmopt.auto.rounds import Round, promote, schedule
from llmopt.auto.screen import line, sampler, screen, values
from llmopt.auto.space import Space
from llmopt.auto.store import DATABASE, Store
from llmopt.config import build
from llmopt.errors import BadInput

ORIGINAL = "original.json"
RESUMABLE_ANYWAY = ("time_limit", "progress", "device", "keep_candidates")
"""Settings a resumed search may change (they do not change what a candidate is)."""


@dataclass
class AutoResult:
    """A finished search.

    Attributes:
        folder: the search folder.
        model: the returned checkpoint (folder/model).
        recipe: the recipe that makes it (folder/recipe.yaml).
        report: folder/report.md (and report.html beside it).
        winner: the winner's outcome (candidate, round, cost, KL, perplexity, ...).
        verified: its cost measured on `model` itself, and the budget.
        complete: False when --time-limit stopped the search before its last round.
        rounds: every round's outcomes.
    """

    folder: Path
    model: Path
    recipe: Path
    report: Path
    winner: dict[str, Any]
    verified: dict[str, Any]
    complete: bool
    rounds: list[list[dict[str, Any]]]


def auto_search(
    model: str | Path,
    output: str | Path,
    budget: str | Budget,
    config: AutoConfig | dict[str, Any] | None = None,
    *,
    say: Callable[[str], None] | None = None,
    **values_: Any,
) -> AutoResult:
    """Search for the best model under `budget` and write it, its recipe and a report.

    Args:
        model: the input: zoo name, folder (any llmopt format) or hub id.
        output: the search folder (created; an earlier search there is resumed).
        budget: 'KIND=FRACTION' (params, nonzero, bytes, latency) or a `Budget`.
        config: the search's settings (an `AutoConfig` or a mapping of its keys);
            `values_` are more keys.
        say: where progress lines go (default: stderr when config.progress).

    Raises:
        BadInput: a bad budget or setting, an output folder that is not a search
            folder (or holds one with other settings), or a budget that no candidate
            of the space can meet; all before the model is loaded.
        SearchFailed: no candidate met the budget (or none finished in time).
    """
    import sys

    budget = budget if isinstance(budget, Budget) else parse_budget(budget)
    cfg = _config(config, values_)
    say = say or (
        (lambda text: print(text, file=sys.stderr, flush=True)) if cfg.progress else _quiet
    )
    folder = _check_folder(output)
    from llmopt.auto.recipes import recovery_config
    from llmopt.outputs import output_lock

    recovery_config(cfg)  # refuse bad --recovery keys before anything is loaded
    from llmopt.pipeline.formats import open_source

    source = open_source(str(model))
    _check_floor(budget, cfg, source)
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder):
        return _search(source, _recipe_spec(str(model), source), folder, budget, cfg, say)


def _quiet(_text: str) -> None:
    pass


def _config(config: AutoConfig | dict[str, Any] | None, values_: dict[str, Any]) -> AutoConfig:
    if isinstance(config, AutoConfig):
        return config.model_copy(update=values_) if values_ else config
    return build(AutoConfig, {**(config or {}), **values_}, where="llmopt auto")


def _check_folder(output: str | Path) -> Path:
    from llmopt.outputs import check_parent

    folder = Path(output).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--output {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / DATABASE).is_file():
        raise BadInput(f"--output {folder}: exists, is not empty and is not an llmopt auto folder")
    check_parent(folder, "--output")
    return folder


def _recipe_spec(model: str, source) -> str:
    """How the returned recipe names the input: a local folder by its absolute path (so the
    recipe runs from anywhere), a zoo name or hub id as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _check_floor(budget: Budget, cfg: AutoConfig, source) -> None:
    """Refuse a budget below the smallest candidate of the space, from config.json alone."""
    from llmopt.auto.latency import LatencyModel
    from llmopt.auto.sizing import Sizer
    from llmopt.evaluate.footprint import checkpoint_bytes
    from llmopt.slim.shape import ParamCounter

    total = ParamCounter(source.hf_config).total
    if budget.kind == "bytes" and source.folder is None:
        raise BadInput(f"--budget {budget}: needs the input as a local folder (or a zoo name)")
    on_disk = checkpoint_bytes(source.folder)["weight_bytes"] if source.folder else 4 * total
    counts = {"unique_params": total, "nonzero_params": total, "weight_bytes": on_disk}
    sizer = Sizer(source.hf_config, counts)
    space = Space(budget, sizer, source.hf_config, cfg.pareto, LatencyModel())
    floor = space.floor()
    if budget.fraction < floor:
        raise BadInput(
            f"--budget {budget}: no candidate can meet it; the smallest model llmopt auto "
            f"makes of {source.spec} keeps {floor:.1%} of its {budget.words}"
        )


def _search(source, spec: str, folder: Path, budget: Budget, cfg: AutoConfig, say) -> AutoResult:
    from llmopt.auto.finish import deliver
    from llmopt.auto.report import write_auto_report

    deadline = None if cfg.time_limit is None else clock.now() + cfg.time_limit
    objectives = 2 if cfg.pareto else 1
    # Opened first: a folder that holds another search is refused before anything loads.
    store = Store(folder, _fingerprint(spec, budget, cfg), objectives, sampler(cfg.seed))
    ctx, space = _context(source, spec, folder, budget, cfg, say)
    store.remember_settings()
    proxy_cap = min(cfg.max_proxy_tokens, ctx.reference.available)
    rounds = schedule(
        cfg.trials, cfg.eta, cfg.finalists, cfg.recovery_tokens, cfg.proxy_tokens, proxy_cap
    )
    complete = screen(ctx, store, space, rounds[0], deadline)
    candidates = {cid: Candidate.from_dict(data) for cid, data in store.candidates().items()}
    for round_ in rounds[1:]:
        if not complete:
            break
        complete = _run_round(ctx, store, round_, candidates, deadline)
    outcomes = [store.outcomes(r.index) for r in rounds]
    if not complete:
        say("time limit reached: no new candidate started; returning the best one so far")
    winner, verified = deliver(ctx, outcomes, complete)
    if complete:  # an incomplete search may be resumed: its survivors stay
        finalists = {o["candidate"] for o in outcomes[-1]} | store.failed(rounds[-1].index)
        discard(ctx, finalists - {winner["candidate"]})
    report = write_auto_report(ctx, rounds, outcomes, winner, verified, complete)
    _write_summary(folder, budget, winner, verified, complete, outcomes)
    model, recipe = folder / "model", folder / "recipe.yaml"
    return AutoResult(folder, model, recipe, report, winner, verified, complete, outcomes)


def _context(source, spec: str, folder: Path, budget: Budget, cfg: AutoConfig, say):
    import torch

    from llmopt.auto.latency import LatencyModel
    from llmopt.auto.proxy import Reference
    from llmopt.auto.recipes import RecipeSettings
    from llmopt.auto.sizing import Sizer
    from llmopt.data.corpus import load_corpus
    from llmopt.models import load_tokenizer
    from llmopt.models.arch import ArchAdapter
    from llmopt.pipeline.formats import load_checkpoint
    from llmopt.runtime import pick_device

    tokenizer = load_tokenizer(source.spec)
    model = load_checkpoint(source, device=pick_device(cfg.device))
    seq_len = cfg.eval_seq_len or min(512, ArchAdapter(model).max_positions)
    settings = RecipeSettings.create(spec, cfg, seq_len)
    original = _measure_original(folder, model, tokenizer, settings, source)
    sizer = Sizer(source.hf_config, original)
    space = Space(budget, sizer, source.hf_config, cfg.pareto, LatencyModel())
    ids = load_corpus(cfg.data, tokenizer, split="validation", text_field=cfg.text_field).ids
    dtype = torch.bfloat16 if cfg.proxy_dtype == "bfloat16" else torch.float32
    reference = Reference(model, ids, seq_len, dtype)
    ctx = Context(folder, budget, cfg, settings, original, reference, model, say)
    return ctx, space


def _measure_original(folder: Path, model, tokenizer, settings, source) -> dict[str, Any]:
    """The input measured as every stage measures (kept in DIR/original.json for a resume)."""
    from llmopt.evaluate.summary import EvalConfig, evaluate_model
    from llmopt.outputs import write_text_atomic

    m = settings.measure
    key = {"model": settings.model, "measure": m.model_dump(mode="json")}
    path = folder / ORIGINAL
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["metrics"]
    eval_config = build(
        EvalConfig,
        where="llmopt auto measurement",
        data=m.data,
        text_field=m.text_field,
        seq_len=m.seq_len,
        max_tokens=m.max_tokens,
        speed=m.speed,
        sample_tokens=0,
        progress=False,
    )
    metrics = evaluate_model(model, tokenizer, eval_config, folder=source.folder)
    write_text_atomic(path, json.dumps({"key": key, "metrics": metrics}, indent=2) + "\n")
    return metrics


def _fingerprint(spec: str, budget: Budget, cfg: AutoConfig) -> dict[str, Any]:
    settings = cfg.model_dump(mode="json", exclude=set(RESUMABLE_ANYWAY))
    return {"model": spec, "budget": str(budget), **settings}


def _run_round(
    ctx: Context,
    store: Store,
    round_: Round,
    candidates: dict[str, Candidate],
    deadline: float | None,
) -> bool:
    """Promote from the round before and run this round's recovery; False if the deadline
    stopped it."""
    before = store.outcomes(round_.index - 1)
    ids = promote(before, round_.size, ctx.config.pareto)
    out = {o["candidate"] for o in before} | store.failed(round_.index - 1)
    discard(ctx, out - set(ids))
    done = {o["candidate"] for o in store.outcomes(round_.index)} | store.failed(round_.index)
    name = "final" if round_.final else f"round {round_.index}"
    for position, cid in enumerate(ids, 1):
        if cid in done:
            continue
        if deadline is not None and clock.now() >= deadline:
            return False
        try:
            outcome = evaluate(ctx, candidates[cid], round_)
        except CandidateFailed as err:
            store.add_failure(round_.index, cid, str(err))
            ctx.say(f"[{name}] failed, left out: {err}")
            continue
        store.add(round_.index, outcome, values(outcome, ctx.config.pareto))
        ctx.log("done", candidate=cid, round=round_.index)
        ctx.say(line(outcome, ctx.budget, f"{name} {position}/{len(ids)}"))
    return True


def _write_summary(folder: Path, budget: Budget, winner, verified, complete, outcomes) -> None:
    from llmopt.outputs import write_text_atomic

    summary = {
        "budget": str(budget),
        "complete": complete,
        "winner": winner,
        "verified": verified,
        "rounds": outcomes,
    }
    write_text_atomic(folder / "auto.json", json.dumps(summary, indent=2, default=str) + "\n")
