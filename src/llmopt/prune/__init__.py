"""Weight pruning: magnitude, Wanda, SparseGPT; unstructured or N:M; OWL; sparse checkpoints.

`prune_model(model, tokenizer, PruneConfig(...))` prunes in place;
`PRUNERS` lists the methods; `storage.save_sparse_model` / `load_sparse_model`
write and read the compact checkpoint format "sparse".
"""

from llmopt.prune.config import PruneConfig
from llmopt.prune.registry import PRUNERS
from llmopt.prune.run import PruneResult, prepare_pruning, prune_model, run_pruning

__all__ = ["PRUNERS", "PruneConfig", "PruneResult", "prepare_pruning", "prune_model", "run_pruning"]
