"""Tokenise documents, split them, pack them into blocks, sample calibration data.

A tokenised corpus is one flat stream of token ids with an EOS token after
every document, plus the offsets where each document starts. Packing cuts the
stream into fixed-length blocks; nothing is lost or duplicated (the tail that
does not fill a block is returned separately).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch

from llmopt.errors import BadInput


@dataclass
class TokenizedCorpus:
    """A flat token stream and its document boundaries.

    Attributes:
        ids: 1-D int64 tensor; every document is followed by the EOS id.
        offsets: 1-D int64 tensor of length n_docs + 1; document i is
            `ids[offsets[i]:offsets[i + 1]]` (its EOS included).
    """

    ids: torch.Tensor
    offsets: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.numel())

    @property
    def num_documents(self) -> int:
        return int(self.offsets.numel() - 1)

    def documents(self) -> list[torch.Tensor]:
        """Each document's ids (ending with EOS), as views into `ids`."""
        bounds = self.offsets.tolist()
        return [self.ids[a:b] for a, b in pairwise(bounds)]


def tokenize_documents(docs: list[str], tokenizer, batch_size: int = 256) -> TokenizedCorpus:
    """Tokenise documents without special tokens and append EOS after each."""
    eos = tokenizer.eos_token_id
    pieces: list[list[int]] = []
    for start in range(0, len(docs), batch_size):
        batch = tokenizer(docs[start : start + batch_size], add_special_tokens=False)["input_ids"]
        pieces.extend([*ids, eos] for ids in batch)
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.int64)
    offsets = torch.zeros(len(pieces) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    ids = torch.tensor([t for p in pieces for t in p], dtype=torch.int64)
    return TokenizedCorpus(ids=ids, offsets=offsets)


def split_documents(
    docs: list[str], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split by document: a seeded permutation; the last ceil(f * n) go to validation.

    Whole documents go to one side, so no text is in both. With one document
    everything is training data and the validation side is empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"val_fraction={val_fraction}: must be in [0, 1)")
    n = len(docs)
    n_val = min(n - 1, math.ceil(val_fraction * n)) if n > 1 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx = sorted(order[n - n_val :]) if n_val else []
    val_set = set(val_idx)
    train = [d for i, d in enumerate(docs) if i not in val_set]
    return train, [docs[i] for i in val_idx]


def pack(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a stream into (n_blocks, seq_len) blocks and the leftover tail.

    `torch.cat([blocks.flatten(), tail])` equals `ids`.
    """
    if seq_len < 2:
        raise BadInput(f"seq_len={seq_len}: must be at least 2")
    n_blocks = ids.numel() // seq_len
    cut = n_blocks * seq_len
    return ids[:cut].view(n_blocks, seq_len), ids[cut:]


def pad_right(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as one batch, right-padded to the longest.

    Returns:
        (input_ids [rows, longest] int64, attention_mask: 1 on tokens, 0 on padding).
    """
    longest = max(r.numel() for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : row.numel()] = row
        mask[i, : row.numel()] = 1
    return ids, mask


def calibration_blocks(ids: torch.Tensor, num: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Sample `num` windows of `seq_len` tokens at seeded random positions.

    Raises:
        BadInput: the stream is shorter than one window.
    """
    if num < 1:
        raise BadInput(f"calibration samples={num}: must be at least 1")
    if ids.numel() < seq_len:
        raise BadInput(f"calibration needs {seq_len} tokens per sample; the data has {ids.numel()}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (num,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
