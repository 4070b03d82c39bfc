"""Text sources: a zoo corpus, local files, or a Hugging Face dataset.

`DATA` is one of:
- `pydoc`: the topics of CPython's `pydoc_data.topics` (the reference
  documentation that ships with every Python), sorted by topic name;
- a `.txt` file (documents are separated by blank lines), a `.jsonl` file (one
  document per line, in the `text` field or the one named), a `.parquet`
  file (that column), or a folder of those (read in sorted order);
- `hf:NAME[:CONFIG[:SPLIT]]`, read through `datasets` (split `train` unless named).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from llmopt.errors import BadInput, did_you_mean

SUFFIXES = (".txt", ".jsonl", ".parquet")


def pydoc_documents() -> list[str]:
    """The CPython reference topics, one document each, in topic-name order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


ZOO_CORPORA: dict[str, Callable[[], list[str]]] = {"pydoc": pydoc_documents}


def _read_txt(path: Path, text_field: str) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInput(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise BadInput(f"{path}:{lineno}: no field {text_field!r} (use --text-field)")
            docs.append(str(record[text_field]))
    return docs


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if text_field not in schema.names:
        raise BadInput(f"{path}: no column {text_field!r}; columns: {', '.join(schema.names)}")
    return [str(t) for t in pq.read_table(path, columns=[text_field]).column(0).to_pylist()]


READERS: dict[str, Callable[[Path, str], list[str]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _read_hf(spec: str, text_field: str) -> list[str]:
    parts = spec.split(":")[1:]
    if not parts or not parts[0] or len(parts) > 3:
        raise BadInput(f"{spec!r}: expected hf:NAME[:CONFIG[:SPLIT]]")
    name, config, split = [*parts, None, None][:3]
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # datasets raises many types; all mean "cannot read it"
        raise BadInput(f"{spec}: cannot load dataset: {str(err).splitlines()[0]}") from None
    if text_field not in ds.column_names:
        raise BadInput(f"{spec}: no column {text_field!r}; columns: {', '.join(ds.column_names)}")
    return [str(t) for t in ds[text_field]]


def load_documents(spec: str, text_field: str = "text") -> list[str]:
    """Read the documents of a data source, in a fixed order.

    Raises:
        BadInput: the source does not exist, has an unknown form, or has no text.
    """
    if spec in ZOO_CORPORA:
        docs = ZOO_CORPORA[spec]()
    elif spec.startswith("hf:"):
        docs = _read_hf(spec, text_field)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not files:
                raise BadInput(f"{spec}: folder has no {'/'.join(SUFFIXES)} files")
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise BadInput(
                    f"{spec}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}"
                )
            files = [path]
        else:
            hint = did_you_mean(spec, ZOO_CORPORA)
            raise BadInput(f"{spec}: no such file, folder or corpus{hint}")
        docs = [doc for f in files for doc in READERS[f.suffix](f, text_field)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise BadInput(f"{spec}: no text found")
    return docs
