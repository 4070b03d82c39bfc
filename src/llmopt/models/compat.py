"""Small shims over transformers API changes that llmopt meets at run time."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def _cache_arg(forward) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; accept both.
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_kwargs(model, cache_obj: Any) -> dict[str, Any]:
    """The keyword that passes a KV cache to `model.forward` in this transformers."""
    return {_cache_arg(type(model).forward): cache_obj}


def output_cache(output: Any) -> Any:
    """The KV cache returned by a forward pass, under either name."""
    found = output.get("cache")
    return found if found is not None else output.get("past_key_values")


def quiet_transformers() -> None:
    """Silence transformers' progress bars and advisory warnings for CLI use."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
