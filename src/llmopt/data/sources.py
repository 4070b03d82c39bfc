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

import codecs
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


def _decode(raw: bytes, path: Path, where: str = "") -> str:
    """UTF-8 text, or BadInput naming the file (and line) and the byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(
            f"{path}{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "convert it to UTF-8"
        ) from None


def _read_txt(path: Path, text_field: str) -> list[str]:
    text = _decode(path.read_bytes(), path)
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            line = _decode(raw, path, f":{lineno}")
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


def _parquet_columns(path: Path) -> list[str]:
    """The column names in a parquet file's footer (nothing else is read).

    Raises:
        BadInput: the file is not parquet (or is damaged).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"{path}: not a readable parquet file ({reason})") from None


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _parquet_columns(path)
    if text_field not in columns:
        raise BadInput(f"{path}: no column {text_field!r}; columns: {', '.join(columns)}")
    try:
        values = pq.read_table(path, columns=[text_field]).column(0).to_pylist()
    except (pa.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"{path}: damaged parquet file ({reason})") from None
    return [str(t) for t in values if t is not None]


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


def source_files(spec: str) -> list[Path]:
    """The files of a local source (a file, or a folder's files in sorted order).

    Raises:
        BadInput: no such file, folder or corpus; an unsupported file type; a
            folder without data files.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise BadInput(f"{spec}: folder has no {'/'.join(SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise BadInput(
                f"{spec}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}"
            )
        return [path]
    hint = did_you_mean(spec, ZOO_CORPORA)
    raise BadInput(f"{spec}: no such file, folder or corpus{hint}")


PEEK_BYTES = 1 << 20


def check_source(spec: str, text_field: str = "text") -> None:
    """Cheap checks of a data source before any model is loaded (its files are not read whole).

    A local source must exist with supported files; a parquet file must have a
    parquet footer with the text column; the start of a .txt/.jsonl file must be
    UTF-8 (the rest is checked when it is read). hf: sources are checked when
    they are loaded.

    Raises:
        BadInput: what is wrong, naming the file.
    """
    if spec in ZOO_CORPORA or spec.startswith("hf:"):
        return
    for path in source_files(spec):
        if path.suffix == ".parquet":
            columns = _parquet_columns(path)
            if text_field not in columns:
                raise BadInput(f"{path}: no column {text_field!r}; columns: {', '.join(columns)}")
            continue
        with path.open("rb") as handle:
            head = handle.read(PEEK_BYTES)
        # Incremental: a character cut by the end of the peek is not an error.
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < PEEK_BYTES)
        except UnicodeDecodeError:
            _decode(head, path)


def load_documents(spec: str, text_field: str = "text") -> list[str]:
    """Read the documents of a data source, in a fixed order.

    Raises:
        BadInput: the source does not exist, has an unknown form, is not UTF-8
            text or parquet, or has no text.
    """
    if spec in ZOO_CORPORA:
        docs = ZOO_CORPORA[spec]()
    elif spec.startswith("hf:"):
        docs = _read_hf(spec, text_field)
    else:
        files = source_files(spec)
        docs = [doc for f in files for doc in READERS[f.suffix](f, text_field)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise BadInput(f"{spec}: no text found")
    return docs
