"""The screening proxy: KL divergence from the input model to a candidate on held-out text.

KL(input || candidate), averaged over every predicted position, measures how
far a candidate's next-token distributions moved from the model it must
replace; on a few thousand tokens it ranks candidates far more steadily than
perplexity on the same tokens (which also counts what the input itself gets
wrong). The text is the validation split of the search's data, which no stage
trains or calibrates on.

The input's log-probabilities are computed once per window and kept (float16,
which holds a log-probability to about three digits where it matters), so
each candidate costs one forward pass per window. The forward passes run in
`dtype` (bfloat16 by default: the ranking does not need float32, a CPU runs
it about three times faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Reference:
    """The input model's next-token distributions on the first tokens of a held-out stream."""

    def __init__(self, model, ids: torch.Tensor, seq_len: int, dtype: torch.dtype):
        """Takes the input model (not changed: a copy runs in `dtype`), the held-out token
        stream, the window length and the dtype of the forward passes."""
        import copy

        self.ids = ids
        self.seq_len = seq_len
        self.dtype = dtype
        self.model = copy.deepcopy(model).to(dtype).eval()
        self._log_probs: list[torch.Tensor] = []

    @property
    def available(self) -> int:
        """Tokens the proxy can use (whole windows of the held-out stream)."""
        return self.ids.numel() // self.seq_len * self.seq_len

    def windows(self, tokens: int) -> int:
        """How many windows cover the first `tokens` tokens (at least one)."""
        return max(1, min(tokens, self.available) // self.seq_len)

    def _window(self, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return self.ids[start : start + self.seq_len].unsqueeze(0)

    def _reference(self, index: int) -> torch.Tensor:
        while len(self._log_probs) <= index:
            window = self._window(len(self._log_probs))
            self._log_probs.append(_log_probs(self.model, window).half())
        return self._log_probs[index]

    @torch.no_grad()
    def kl(self, candidate, tokens: int) -> float:
        """Mean KL(input || candidate) in nats per position over the first `tokens` tokens.

        The candidate is converted to this reference's dtype in place when it is not in it.
        """
        device = next(candidate.parameters()).device
        if next(candidate.parameters()).dtype != self.dtype:
            candidate = candidate.to(self.dtype)
        candidate.eval()
        total, positions = 0.0, 0
        for index in range(self.windows(tokens)):
            reference = self._reference(index).float()
            log_q = _log_probs(candidate, self._window(index).to(device)).cpu()
            kl = (reference.exp() * (reference - log_q)).sum(-1)
            total += float(kl.double().sum())
            positions += kl.numel()
        return total / positions


@torch.no_grad()
def _log_probs(model, window: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(input_ids=window.to(device)).logits[0].float()
    return F.log_softmax(logits, dim=-1).cpu()
