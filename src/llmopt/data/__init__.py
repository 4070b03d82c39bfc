"""Data: sources, splitting, tokenisation, packing and calibration sampling."""

from llmopt.data.corpus import load_corpus
from llmopt.data.packing import (
    TokenizedCorpus,
    calibration_blocks,
    pack,
    pad_right,
    split_documents,
    tokenize_documents,
)
from llmopt.data.sources import load_documents

__all__ = [
    "TokenizedCorpus",
    "calibration_blocks",
    "load_corpus",
    "load_documents",
    "pack",
    "pad_right",
    "split_documents",
    "tokenize_documents",
]
