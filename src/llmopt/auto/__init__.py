"""Automatic strategy search: the best model under a budget (`llmopt auto`).

The user knows the budget (`params=0.6`, `nonzero=0.5`, `bytes=0.4`,
`latency=0.7`: a fraction of the input model's cost), not which technique
with which settings meets it best. The search answers with a model, the
recipe that makes it and a report:

- `space`: candidates are chains of stages (slim or share, prune, quantize)
  whose settings Optuna chooses; one amount per candidate is solved so that it
  lands just under the budget (`sizing`, `structure`).
- `screen`, `rounds`: every candidate is screened by the KL to the input on
  held-out tokens right after its calibration-only stages (`proxy`); successive
  halving keeps the best ones with growing recovery and proxy budgets; the
  finalists get the full recovery and are compared on held-out perplexity.
- `evaluate`: each candidate at each round is an ordinary recipe run by
  `run_recipe` (`recipes`), so it resumes, reuses finished stages, and the
  winner's recipe reproduces the returned model through `llmopt run`.
- `finish`, `report`: the budget is checked on the returned model itself; the
  report plots every candidate, the ranking before and after recovery, and why
  the winner won.
"""

from llmopt.auto.budget import Budget, parse_budget
from llmopt.auto.config import AutoConfig
from llmopt.auto.finish import SearchFailed
from llmopt.auto.search import AutoResult, auto_search

__all__ = ["AutoConfig", "AutoResult", "Budget", "SearchFailed", "auto_search", "parse_budget"]
