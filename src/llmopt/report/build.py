"""Build the report of one or more runs: a table of every output, plots, samples, recipes."""

from __future__ import annotations

from pathlib import Path

from llmopt.report import plots
from llmopt.report.collect import Entry, collect, pareto_front
from llmopt.report.document import Code, Document, Heading, Image, Paragraph, Table
from llmopt.units import human_bytes, human_count

COLUMNS = [
    "output",
    "stage",
    "format",
    "params",
    "unique",
    "non-zero",
    "on disk",
    "perplexity",
    "prefill tok/s",
    "decode ms/tok",
    "peak MiB",
    "time",
]


def _cell(value, show) -> str:
    return "-" if value is None else show(value)


def _row(entry: Entry, on_front: bool) -> list[str]:
    m = entry.metrics
    ppl = _cell(m.get("perplexity"), lambda v: f"{v:.2f}")
    return [
        entry.label + (" *" if on_front else ""),
        entry.stage,
        entry.format,
        _cell(m.get("total_params"), human_count),
        _cell(m.get("unique_params"), human_count),
        _cell(m.get("nonzero_params"), human_count),
        _cell(m.get("weight_bytes"), human_bytes),
        ppl,
        _cell(m.get("prefill_tokens_per_s"), lambda v: f"{v:,.0f}"),
        _cell(m.get("decode_ms_per_token"), lambda v: f"{v:.1f}"),
        _cell(m.get("peak_memory_mb"), lambda v: f"{v:,.0f}"),
        _cell(entry.wall_time_s, lambda v: f"{v:.0f} s"),
    ]


def _measured_on(entries: list[Entry]) -> str:
    kinds = {
        (e.metrics.get("eval_tokens"), e.metrics.get("seq_len"))
        for e in entries
        if e.metrics.get("eval_tokens")
    }
    if len(kinds) == 1:
        tokens, seq_len = kinds.pop()
        return f"{tokens:,} held-out tokens at seq-len {seq_len}"
    return "held-out tokens (the counts differ between outputs: see llmopt.json)"


def build_document(folders: list[Path], figures: Path) -> Document:
    """The report's content; its PNG figures are written into `figures`.

    Raises:
        BadInput: a folder holds no llmopt output.
    """
    entries = collect(folders)
    names = ", ".join(str(f) for f in folders)
    doc = Document(f"llmopt report: {names}")
    front = pareto_front(entries)
    doc.add(
        Paragraph(
            f"Every output, measured the same way: perplexity on {_measured_on(entries)} "
            "(the validation split, which no stage trains or calibrates on), parameters "
            "(total counts every use of a tensor, unique counts storage), weights on disk, "
            "prefill throughput, decode latency with the KV cache and peak memory. "
            "* marks the Pareto front of size on disk against perplexity."
        ),
        Table(COLUMNS, [_row(e, i in front) for i, e in enumerate(entries)]),
    )
    figures.mkdir(parents=True, exist_ok=True)
    for make, name, caption in (
        (plots.quality_vs_size, "quality-vs-size.png", "Perplexity against size on disk"),
        (plots.loss_curves, "loss.png", "Training and distillation loss"),
        (plots.layer_sparsity, "sparsity.png", "Sparsity per decoder block"),
        (plots.speed, "speed.png", "Prefill throughput and decode latency"),
    ):
        path = make(entries, figures / name)
        if path is not None:
            doc.add(Heading(caption), Image(path, caption))
    samples = [e for e in entries if e.metrics.get("sample") is not None]
    if samples:
        prompt = samples[0].metrics.get("sample_prompt", "")
        doc.add(
            Heading("What the numbers mean: the same prompt, greedy"),
            Paragraph(f"Prompt: {prompt!r}"),
            Table(
                ["output", "continuation"],
                [[e.label, e.metrics["sample"].strip()] for e in samples],
            ),
        )
    for folder in folders:
        recipe = Path(folder) / "recipe.yaml"
        if recipe.is_file():
            doc.add(Heading(f"Recipe of {Path(folder).name}"), Code(recipe.read_text()))
    return doc
