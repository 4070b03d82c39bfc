"""Data sources, the document split, tokenisation, packing and calibration sampling."""

from __future__ import annotations

import json

import pytest
import torch

from llmopt.data import (
    calibration_blocks,
    load_corpus,
    load_documents,
    pack,
    split_documents,
    tokenize_documents,
)
from llmopt.errors import BadInput


def test_pydoc_is_fixed_and_nonempty():
    docs = load_documents("pydoc")
    assert len(docs) > 50
    assert docs == load_documents("pydoc")


def test_file_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nstill first\n\nsecond para\n\n\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "j1"}) + "\n\n" + json.dumps({"text": "j2", "x": 1}) + "\n"
    )
    assert load_documents(str(tmp_path / "a.txt")) == ["first para\nstill first", "second para"]
    assert load_documents(str(tmp_path / "b.jsonl")) == ["j1", "j2"]
    # A folder reads its files in sorted order.
    assert load_documents(str(tmp_path)) == ["first para\nstill first", "second para", "j1", "j2"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(BadInput, match="no field 'text'"):
        load_documents(str(tmp_path / "c.jsonl"))
    assert load_documents(str(tmp_path / "c.jsonl"), text_field="body") == ["x"]


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "", "p3"]}), tmp_path / "d.parquet")
    assert load_documents(str(tmp_path / "d.parquet")) == ["p1", "p3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("pydok", "did you mean 'pydoc'"), ("hf:", "expected hf:NAME"), ("x.csv", "no such file")],
)
def test_bad_sources(spec, message):
    with pytest.raises(BadInput, match=message):
        load_documents(spec)


def test_empty_source(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n   \n")
    with pytest.raises(BadInput, match="no text found"):
        load_documents(str(tmp_path / "e.txt"))


def test_split_is_by_document_deterministic_and_complete():
    docs = [f"doc {i}" for i in range(37)]
    train, val = split_documents(docs, val_fraction=0.1, seed=3)
    assert len(val) == 4 and sorted(train + val) == sorted(docs)
    assert not set(train) & set(val)
    assert (train, val) == split_documents(docs, val_fraction=0.1, seed=3)
    assert val != split_documents(docs, val_fraction=0.1, seed=4)[1]


def test_tokenize_puts_eos_after_every_document(tiny_tokenizer):
    docs = ["hello world", "def f(x): return x", "a"]
    corpus = tokenize_documents(docs, tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    assert corpus.num_documents == 3
    for doc, ids in zip(docs, corpus.documents(), strict=True):
        assert ids[-1] == eos
        assert tiny_tokenizer.decode(ids[:-1]) == doc
    assert int((corpus.ids == eos).sum()) == 3


@pytest.mark.parametrize("seq_len", [2, 7, 64, 1000])
def test_pack_loses_and_duplicates_nothing(tiny_tokenizer, seq_len):
    corpus = tokenize_documents(load_documents("pydoc")[:5], tiny_tokenizer)
    blocks, tail = pack(corpus.ids, seq_len)
    assert blocks.shape[1] == seq_len and tail.numel() < seq_len
    assert torch.equal(torch.cat([blocks.flatten(), tail]), corpus.ids)


def test_calibration_blocks_are_seeded_windows():
    ids = torch.arange(1000)
    a = calibration_blocks(ids, 8, 32, seed=1)
    assert a.shape == (8, 32)
    assert torch.equal(a, calibration_blocks(ids, 8, 32, seed=1))
    assert not torch.equal(a, calibration_blocks(ids, 8, 32, seed=2))
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(8, 31, dtype=ids.dtype))  # contiguous
    with pytest.raises(BadInput, match="needs 2000 tokens"):
        calibration_blocks(ids, 1, 2000)


def test_corpus_cache_is_keyed_by_content(tmp_path, monkeypatch, tiny_tokenizer):
    monkeypatch.setenv("LLMOPT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "t.txt"
    src.write_text("alpha beta\n\ngamma delta\n\nepsilon")
    first = load_corpus(str(src), tiny_tokenizer, split="all")
    assert len(list((tmp_path / "cache" / "data").glob("*.safetensors"))) == 1
    again = load_corpus(str(src), tiny_tokenizer, split="all")
    assert torch.equal(first.ids, again.ids)
    src.write_text("alpha beta\n\ngamma delta\n\nzeta")
    changed = load_corpus(str(src), tiny_tokenizer, split="all")
    assert len(list((tmp_path / "cache" / "data").glob("*.safetensors"))) == 2
    assert not torch.equal(first.ids, changed.ids)


def test_hf_source_reads_through_datasets(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["a b", "c d"], "body": ["x", "y"]}), folder / "train.parquet")
    assert load_documents(f"hf:{folder}") == ["a b", "c d"]
    assert load_documents(f"hf:{folder}::train", text_field="body") == ["x", "y"]
    with pytest.raises(BadInput, match="no column 'nope'"):
        load_documents(f"hf:{folder}", text_field="nope")
