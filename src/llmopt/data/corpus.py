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
import math
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from llmopt.cache import cache_root
from llmopt.data.packing import TokenizedCorpus, split_documents, tokenize_documents
from llmopt.data.sources import load_documents
from llmopt.errors import BadInput
from llmopt.outputs import write_file_atomic

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

    Documents are split whole (a seeded `val_fraction` of them is validation);
    a source that is one document is split by tokens instead (its last
    `val_fraction` is validation).

    Raises:
        BadInput: the source is bad, or the chosen split has no documents.
    """
    docs = load_documents(data, text_field=text_field)
    if split != "all" and len(docs) == 1:
        # One long document (a book, a log): split its tokens, not documents, so the
        # user's text is both trainable and evaluable, and the two never overlap.
        whole = _tokenized(docs, tokenizer, use_cache)
        return split_tokens(whole, val_fraction, split)
    if split != "all":
        train, val = split_documents(docs, val_fraction=val_fraction, seed=seed)
        docs = train if split == "train" else val
        if not docs:
            raise BadInput(
                f"{data}: the {split} split is empty ({len(train) + len(val)} documents)"
            )
    return _tokenized(docs, tokenizer, use_cache)


def split_tokens(corpus: TokenizedCorpus, val_fraction: float, split: str) -> TokenizedCorpus:
    """The first (train) or last (validation) part of a one-document corpus, cut by tokens.

    Raises:
        BadInput: the document is too short to give each side two tokens.
    """
    n = len(corpus)
    n_val = math.ceil(val_fraction * n)
    if n_val < 2 or n - n_val < 2:
        raise BadInput(f"one document of {n} tokens is too short to split into train/validation")
    ids = corpus.ids[: n - n_val] if split == "train" else corpus.ids[n - n_val :]
    return TokenizedCorpus(ids=ids.clone(), offsets=torch.tensor([0, ids.numel()]))


def _tokenized(docs: list[str], tokenizer, use_cache: bool) -> TokenizedCorpus:
    """Tokenise `docs` through the on-disk cache (keyed by content and tokenizer)."""
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
        tensors = {"ids": corpus.ids, "offsets": corpus.offsets}
        write_file_atomic(path, lambda tmp: save_file(tensors, str(tmp)))
    return corpus
