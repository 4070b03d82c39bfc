"""The search's report: every candidate on a cost/quality plot with the Pareto front, the
ranking before and after recovery, and why the winner won (DIR/report.md and .html).

It is built from the same blocks as `llmopt report` (`llmopt.report.document`),
so the Markdown file and the HTML page say the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmopt.auto.rounds import Round
from llmopt.report.collect import Entry, pareto_front
from llmopt.report.document import Code, Document, Heading, Image, Paragraph, Table

Outcomes = list[list[dict[str, Any]]]


def latest(outcomes: Outcomes) -> dict[str, dict[str, Any]]:
    """Each candidate's outcome in the last round it reached, by id (screening order)."""
    out: dict[str, dict[str, Any]] = {}
    for round_outcomes in outcomes:
        for outcome in round_outcomes:
            out[outcome["candidate"]] = outcome
    return out


def ranks(outcomes: list[dict[str, Any]], key: str) -> dict[str, int]:
    """1-based rank of each feasible outcome by `key` (lower is better)."""
    feasible = sorted(
        (o for o in outcomes if o["feasible"]), key=lambda o: (o[key], o["candidate"])
    )
    return {o["candidate"]: i for i, o in enumerate(feasible, 1)}


def why(outcomes: Outcomes, winner: dict[str, Any], verified: dict[str, Any], budget) -> str:
    """One sentence, with the numbers, on why the winner won."""
    pool = sorted(
        (o for o in outcomes[winner["round"]] if o["feasible"]),
        key=lambda o: (o["perplexity"], o["kl"], o["candidate"]),
    )
    text = (
        f"{winner['label']} ({winner['candidate']}) won: held-out perplexity "
        f"{winner['perplexity']:.2f} after {winner['recovery_tokens']:,} recovery tokens, at "
        f"{verified['cost']:.3f} of the input's {budget.words} (budget {budget.fraction:g}, "
        "measured on the returned model)"
    )
    others = [o for o in pool if o["candidate"] != winner["candidate"]]
    if others:
        second = others[0]
        gap = 100 * (second["perplexity"] - winner["perplexity"]) / second["perplexity"]
        if second["perplexity"] > winner["perplexity"]:
            text += (
                f"; {gap:.2f}% lower than the runner-up {second['label']} "
                f"({second['perplexity']:.2f}) after the same recovery"
            )
        else:  # equal perplexity: the order of `ranked` (KL, then id) decided
            text += (
                f"; the runner-up {second['label']} scored the same "
                f"({second['perplexity']:.2f}): the lower KL to the input "
                f"({winner['kl']:.4f} against {second['kl']:.4f}) decided"
            )
    screened = ranks(outcomes[0], "kl")
    first = screened.get(winner["candidate"])
    if first is not None and first > 1:
        best = next(o for o in outcomes[0] if screened.get(o["candidate"]) == 1)
        text += (
            f". Before recovery it ranked {first} of {len(screened)} by KL to the input "
            f"({_screen_kl(outcomes, winner):.4f} against {best['kl']:.4f} for {best['label']}): "
            "recovery changed the order"
        )
    elif first == 1:
        text += f". It was also the best of {len(screened)} candidates by KL before recovery"
    return text + "."


def _screen_kl(outcomes: Outcomes, winner: dict[str, Any]) -> float:
    return next(o["kl"] for o in outcomes[0] if o["candidate"] == winner["candidate"])


def candidate_table(outcomes: Outcomes, rounds: list[Round], front: set[str]) -> Table:
    """A row per candidate: recipe, cost, and KL / perplexity in every round it reached."""
    header = ["candidate", "recipe", "cost", "fits"]
    for r in rounds:
        header += [f"KL r{r.index}", f"ppl r{r.index}"]
    by_round = [{o["candidate"]: o for o in round_outcomes} for round_outcomes in outcomes]
    rows = []
    for cid, outcome in latest(outcomes).items():
        row = [
            cid + (" *" if cid in front else ""),
            outcome["label"],
            f"{outcome['cost']:.3f}",
            "yes" if outcome["feasible"] else "no",
        ]
        for index in range(len(rounds)):
            o = by_round[index].get(cid)
            row += ["-", "-"] if o is None else [f"{o['kl']:.4f}", f"{o['perplexity']:.2f}"]
        rows.append(row)
    return Table(header, rows)


def ranking_table(outcomes: Outcomes) -> Table:
    """The candidates that got recovery: their rank in every round (KL; the last: perplexity)."""
    last = len(outcomes) - 1
    round_ranks = [ranks(o, "kl") for o in outcomes[:-1]] + [ranks(outcomes[-1], "perplexity")]
    header = ["candidate", "recipe"] + [
        f"rank r{i} ({'ppl' if i == last else 'KL'})" for i in range(len(outcomes))
    ]
    rows = []
    for cid, outcome in latest(outcomes).items():
        if outcome["round"] == 0 and last > 0:
            continue
        rows.append([cid, outcome["label"]] + [str(r.get(cid, "-")) for r in round_ranks])
    rows.sort(key=lambda row: int(row[-1]) if row[-1].isdigit() else 10**9)
    return Table(header, rows)


def plot(outcomes: Outcomes, winner: dict[str, Any], budget, path: Path) -> tuple[Path, set[str]]:
    """Held-out perplexity against cost for every candidate (its latest round), the Pareto
    front drawn, the budget as a line; returns the PNG and the ids on the front."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    points = list(latest(outcomes).values())
    entries = [
        Entry("", o["candidate"], "auto", "", {"cost": o["cost"], "perplexity": o["perplexity"]})
        for o in points
    ]
    front_index = pareto_front(entries, x="cost", y="perplexity")
    front = {points[i]["candidate"] for i in front_index}
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("viridis")
    top = max(o["round"] for o in points) or 1
    for o in points:
        ax.scatter(
            o["cost"],
            o["perplexity"],
            s=40,
            zorder=3,
            color=colours(o["round"] / top),
            marker="*" if o["candidate"] == winner["candidate"] else "o",
        )
        ax.annotate(
            o["candidate"],
            (o["cost"], o["perplexity"]),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize=7,
        )
    line = sorted((points[i]["cost"], points[i]["perplexity"]) for i in front_index)
    if len(line) > 1:
        ax.plot(*zip(*line, strict=True), color="tab:red", lw=1, ls="--", label="Pareto front")
    ax.axvline(budget.fraction, color="grey", lw=1, ls=":", label=f"budget {budget}")
    ax.set_yscale("log")
    ax.set_xlabel(f"{budget.words} (fraction of the input's)")
    ax.set_ylabel("held-out perplexity after the candidate's last round (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, front


def write_auto_report(
    ctx, rounds: list[Round], outcomes: Outcomes, winner, verified, complete: bool
) -> Path:
    """Write DIR/report.md and DIR/report.html (figures in DIR/report_files); returns the .md."""
    from llmopt.report.document import render_html, render_markdown

    folder: Path = ctx.folder
    figures = folder / "report_files"
    figures.mkdir(parents=True, exist_ok=True)
    image, front = plot(outcomes, winner, ctx.budget, figures / "cost-vs-quality.png")
    doc = Document(f"llmopt auto: {ctx.settings.model} under {ctx.budget}")
    doc.add(
        Heading("Why the winner won"),
        Paragraph(why(outcomes, winner, verified, ctx.budget)),
        Heading("The search"),
        Paragraph(_search_text(ctx, rounds, outcomes, complete)),
        Image(
            image,
            "Held-out perplexity against cost (every candidate; * on the plot: the "
            "winner; red: the Pareto front)",
        ),
        Heading("Every candidate"),
        Paragraph(
            "Cost: measured on the candidate's checkpoint, as a fraction of the input's; "
            "* marks the Pareto front of cost against perplexity."
        ),
        candidate_table(outcomes, rounds, front),
        Heading("Ranking before and after recovery"),
        ranking_table(outcomes),
        Heading("The recipe of the winner (llmopt run reproduces the returned model)"),
        Code((folder / "recipe.yaml").read_text(encoding="utf-8")),
    )
    markdown = folder / "report.md"
    markdown.write_text(render_markdown(doc, folder), encoding="utf-8")
    markdown.with_suffix(".html").write_text(render_html(doc), encoding="utf-8")
    return markdown


def _search_text(ctx, rounds: list[Round], outcomes: Outcomes, complete: bool) -> str:
    parts = []
    for r, done in zip(rounds, outcomes, strict=True):
        name = "screening" if r.index == 0 else ("final" if r.final else f"round {r.index}")
        recovery = f"{done[0]['recovery_tokens']:,}" if done else f"about {r.recovery_tokens:,}"
        parts.append(
            f"{name}: {len(done)} of {r.size} candidates, {recovery} recovery tokens, "
            f"KL on {done[0]['proxy_tokens'] if done else r.proxy_tokens:,} held-out tokens"
        )
    original = ctx.original
    text = (
        f"Input: {ctx.settings.model}, held-out perplexity {original['perplexity']:.2f} on "
        f"{original['eval_tokens']:,} tokens of the validation split of {ctx.settings.data}. "
        "Rounds: " + "; ".join(parts) + "."
    )
    if not complete:
        text += " The time limit stopped the search before its last round."
    return text
