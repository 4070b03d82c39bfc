"""The report's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from llmopt.report.collect import Entry, loss_curve, pareto_front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, *axes) -> Path:
    """Grid, legend where there are labels, tight layout, PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quality_vs_size(entries: list[Entry], path: Path) -> Path | None:
    """Perplexity (log) against weights on disk, every output labelled, the Pareto front drawn."""
    points = [
        (e, e.metrics["weight_bytes"] / 2**20, e.metrics["perplexity"])
        for e in entries
        if e.metrics.get("weight_bytes") and e.metrics.get("perplexity")
    ]
    if not points:
        return None
    plt = _pyplot()
    front = pareto_front([e for e, _, _ in points])
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (entry, x, y) in enumerate(points):
        ax.scatter(x, y, s=40, color="tab:red" if i in front else "tab:blue", zorder=3)
        ax.annotate(entry.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    line = sorted((points[i][1], points[i][2]) for i in front)
    if len(line) > 1:
        ax.plot(*zip(*line, strict=True), color="tab:red", lw=1, ls="--", label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("weights on disk (MiB)")
    ax.set_ylabel("held-out perplexity (log)")
    return _save(fig, path, ax)


def loss_curves(entries: list[Entry], path: Path) -> Path | None:
    """Training / distillation loss against step for every output that trained."""
    curves = [(e, loss_curve(e)) for e in entries]
    curves = [(e, rows) for e, rows in curves if rows]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for entry, rows in curves:
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=entry.label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per label token)")
    return _save(fig, path, ax)


def layer_sparsity(entries: list[Entry], path: Path) -> Path | None:
    """Sparsity of each decoder block's pruned linears, one line per pruned output."""
    series = [
        (e, (e.record or {}).get("metrics", {}).get("prune", {}).get("block_sparsity"))
        for e in entries
    ]
    series = [(e, s) for e, s in series if s]
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for entry, values in series:
        blocks = [i for i, v in enumerate(values) if v is not None]
        ax.plot(blocks, [100 * values[i] for i in blocks], marker="o", ms=3, label=entry.label)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("zeros in its pruned linears (%)")
    ax.set_ylim(0, 100)
    return _save(fig, path, ax)


def speed(entries: list[Entry], path: Path) -> Path | None:
    """Prefill throughput and decode latency of every output, side by side."""
    rows = [e for e in entries if e.metrics.get("prefill_tokens_per_s")]
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.5))
    labels = [e.label for e in rows]
    left.barh(labels, [e.metrics["prefill_tokens_per_s"] for e in rows], color="tab:green")
    left.set_xlabel("prefill (tokens/s, higher is better)")
    right.barh(labels, [e.metrics["decode_ms_per_token"] for e in rows], color="tab:orange")
    right.set_xlabel("decode (ms/token, lower is better)")
    right.set_yticklabels([])
    for ax in (left, right):
        ax.invert_yaxis()
    return _save(fig, path, left, right)
