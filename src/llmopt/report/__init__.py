"""Reports: one Markdown file (and the same as a self-contained HTML page) for runs.

`write_report([RUN_DIR, ...], "report.md")` writes report.md, report.html and
the PNG figures (in `report_files/` beside them): a table of every output
(parameters, unique parameters, non-zeros, bytes on disk, perplexity, prefill
throughput, decode latency, peak memory, wall time) with the Pareto front
marked, perplexity against size, loss curves, per-block sparsity, speed, and a
short greedy continuation of the same prompt by every output.
"""

from __future__ import annotations

from pathlib import Path

from llmopt.report.document import render_html, render_markdown


def write_report(folders: list[str | Path], output: str | Path) -> Path:
    """Write the report of `folders` to `output` (.md) and beside it (.html); returns the .md path.

    Raises:
        BadInput: a folder holds no llmopt output, or the report cannot be written.
    """
    from llmopt.errors import BadInput
    from llmopt.report.build import build_document

    output = Path(output).expanduser()
    if output.suffix.lower() not in (".md", ".html"):
        output = output.with_suffix(".md")
    markdown, page = output.with_suffix(".md"), output.with_suffix(".html")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        doc = build_document([Path(f) for f in folders], output.parent / f"{output.stem}_files")
        markdown.write_text(render_markdown(doc, output.parent), encoding="utf-8")
        page.write_text(render_html(doc), encoding="utf-8")
    except OSError as err:
        raise BadInput(f"--output {output}: cannot write the report ({err.strerror})") from None
    return markdown
