"""The report's Markdown: a table row stays one line whatever a cell holds."""

from __future__ import annotations

from pathlib import Path

from llmopt.report.document import Document, Table, render_markdown


def test_a_cell_with_newlines_and_pipes_stays_in_its_row():
    doc = Document("t")
    doc.add(Table(["output", "continuation"], [["a", "one\n\ntwo | three"]]))
    lines = render_markdown(doc, Path(".")).splitlines()
    rows = [line for line in lines if line.startswith("| a ")]
    assert rows == ["| a | one  two \\| three |"]
