"""A short greedy continuation of a fixed prompt: what a perplexity means, in words."""

from __future__ import annotations

import torch

SAMPLE_PROMPT = "The with statement is used to"
"""Fixed so that every output of every run continues the same text."""


@torch.no_grad()
def sample_continuation(model, tokenizer, prompt: str = SAMPLE_PROMPT, tokens: int = 24) -> str:
    """Greedy-decode `tokens` tokens after `prompt` with the KV cache; returns only the new text.

    Greedy, so the same model always writes the same words.
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
