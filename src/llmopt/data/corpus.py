"""A data source, split and tokenised, cached on disk.

The cache key is the content of the documents and the tokenizer itself (its
full serialisation), so editing a file or switching tokenizers re-tokenises,
and nothing else does. The cached form is the flat stream plus offsets, which
any sequence length can be packed from cheaply, so the length is not part of
the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Literal

from safetensors.torch import load_file, save_file

from llmopt.cache import cache_root
from llmopt.data.packing import TokenizedCorpus, split_documents, tokenize_documents
from llmopt.data.sources import load_documents
from llmopt.errors import BadInput

Split = Literal["train", "validation", "all"]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer maps text to ids."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def documents_fingerprint(docs: list[str]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update(hashlib.sha256(doc.encode()).digest())
    return h.hexdigest()


def load_corpus(
    data: str,
    tokenizer,
    split: Split = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    text_field: str = "text",
    use_cache: bool = True,
) -> TokenizedCorpus:
    """Read, split and tokenise a data source (through the cache).

    Raises:
        BadInput: the source is bad, or the chosen split has no documents.
    """
    docs = load_documents(data, text_field=text_field)
    if split != "all":
        train, val = split_documents(docs, val_fraction=val_fraction, seed=seed)
        docs = train if split == "train" else val
        if not docs:
            raise BadInput(
                f"{data}: the {split} split is empty ({len(train) + len(val)} documents)"
            )
    key = hashlib.sha256(
        f"{documents_fingerprint(docs)}:{tokenizer_fingerprint(tokenizer)}".encode()
    ).hexdigest()[:32]
    path = cache_root() / "data" / f"{key}.safetensors"
    if use_cache and path.is_file():
        tensors = load_file(path)
        return TokenizedCorpus(ids=tensors["ids"], offsets=tensors["offsets"])
    corpus = tokenize_documents(docs, tokenizer)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=path.parent)
        os.close(fd)
        save_file({"ids": corpus.ids, "offsets": corpus.offsets}, tmp)
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    return corpus
