"""Models: loading (zoo name, local folder, hub id) and per-family adapters."""

from llmopt.models.arch import ArchAdapter, spec_for
from llmopt.models.loading import load_model, load_tokenizer, resolve_model

__all__ = ["ArchAdapter", "load_model", "load_tokenizer", "resolve_model", "spec_for"]
