"""Make decoder layers really share their parameters, and undo nothing else.

Layers that run the same block keep distinct block modules (HF attention
modules carry the `layer_idx` of their KV-cache slot, so each layer must keep
its own module), but every parameter of those modules is one `nn.Parameter`
object: the unique-parameter count and the memory drop, and a backward pass
accumulates every layer's gradient into the one tensor.

With relaxation (`lora_rank` > 0) only the matrices are shared; each layer of
a shared group keeps its own norms and biases (vectors: a fraction of a
percent of a block) and adds its own low-rank delta to each linear, so that
at full rank the model is the original one.

The layout (the plan and the rank) is kept on the model (`SHARING_ATTR`) and
in its config (`CONFIG_KEY`, so it travels in config.json through any save),
from where `llmopt.share.storage` writes and restores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter, get_path, set_path, weight_out_in
from llmopt.share.init import INITS, Weighting, weighted_value
from llmopt.share.plan import SharePlan
from llmopt.share.relax import LowRankDelta, clipped_rank, init_from_svd

SHARING_ATTR = "llmopt_sharing"
"""Attribute of a shared model holding its `ShareLayout`."""
CONFIG_KEY = "llmopt_sharing"
"""Key of the layout in the model's config (and so in config.json)."""


@dataclass(frozen=True)
class ShareLayout:
    """What a shared model looks like: which block each layer runs, and the delta rank."""

    plan: SharePlan
    lora_rank: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"block_map": list(self.plan.block_of), "lora_rank": self.lora_rank}

    @classmethod
    def from_dict(cls, data: dict, num_layers: int) -> ShareLayout:
        """Read a layout written by `to_dict`.

        Raises:
            BadInput: the map does not fit the model or the rank is invalid.
        """
        from llmopt.share.plan import parse_map

        block_map = data.get("block_map")
        rank = data.get("lora_rank", 0)
        if not isinstance(block_map, list) or not isinstance(rank, int) or rank < 0:
            raise BadInput(f"corrupt sharing layout {data!r}")
        plan = parse_map(",".join(str(b) for b in block_map), num_layers)
        return cls(plan, rank)


def layout_of(model: nn.Module) -> ShareLayout | None:
    """The sharing layout of a model that llmopt shared, or None."""
    return getattr(model, SHARING_ATTR, None)


def _shared_names(block: nn.Module, relaxed: bool) -> list[str]:
    # Relaxed sharing shares only matrices; vectors (norms, biases) stay per layer.
    return [n for n, p in block.named_parameters() if not relaxed or p.ndim >= 2]


def _assign(block: nn.Module, name: str, param: nn.Parameter) -> None:
    module_path, _, attr = name.rpartition(".")
    setattr(get_path(block, module_path), attr, param)


def _tie_group(blocks: nn.ModuleList, group: list[int], values: dict[str, torch.Tensor]) -> None:
    """Make every layer of `group` use one new Parameter per name, holding `values`."""
    for name, value in values.items():
        requires_grad = blocks[group[0]].get_parameter(name).requires_grad
        shared = nn.Parameter(value, requires_grad=requires_grad)
        for layer in group:
            _assign(blocks[layer], name, shared)


def _group_values(
    blocks: nn.ModuleList, weighting: Weighting, names: list[str]
) -> dict[str, torch.Tensor]:
    return {
        name: weighted_value(
            {layer: blocks[layer].get_parameter(name) for layer in weighting}, weighting
        )
        for name in names
    }


def _relax_group(
    adapter: ArchAdapter,
    group: list[int],
    originals: dict[int, dict[str, torch.Tensor]] | None,
    rank: int,
    generator: torch.Generator,
) -> None:
    """Wrap each linear of each layer in `group` with its own low-rank delta.

    `originals` (layer -> linear name -> original (out, in) weight) sets the
    deltas by SVD; None leaves them zero (their values are loaded later).
    """
    blocks = adapter.blocks()
    for layer in group:
        for name, module in adapter.block_linears(blocks[layer]).items():
            delta = LowRankDelta(module, clipped_rank(rank, module))
            if originals is not None:
                target = originals[layer][name] - weight_out_in(module)
                init_from_svd(delta, target.detach(), generator)
            set_path(blocks[layer], name, delta)


def _mark(model: nn.Module, layout: ShareLayout) -> None:
    setattr(model, SHARING_ATTR, layout)
    setattr(model.config, CONFIG_KEY, layout.to_dict())


@torch.no_grad()
def share_layers(
    model: nn.Module, plan: SharePlan, init: str = "average", lora_rank: int = 0, seed: int = 0
) -> ShareLayout:
    """Tie the decoder layers of `model` in place according to `plan`.

    Args:
        model: a causal LM of a supported family, not shared yet.
        plan: which block each layer runs (its length must be the layer count).
        init: 'average', 'first' or 'stepwise' (see llmopt.share.init).
        lora_rank: per-layer low-rank delta rank; 0 shares the blocks outright.
        seed: seeds the random factor of deltas whose target is zero.

    Returns:
        The layout, also attached to the model and to its config.

    Raises:
        BadInput: unsupported family, a plan of the wrong length, an unknown
            init, a negative rank, or a model that is already shared.
    """
    adapter = ArchAdapter(model)
    if init not in INITS:
        raise BadInput(f"--init {init!r}: unknown; known: {', '.join(INITS)}")
    if lora_rank < 0:
        raise BadInput(f"--lora-rank {lora_rank}: must be >= 0")
    if plan.num_layers != adapter.num_layers:
        raise BadInput(f"the plan has {plan.num_layers} layers, the model {adapter.num_layers}")
    if layout_of(model) is not None:
        raise BadInput("the model is already shared; share the original model instead")
    blocks = adapter.blocks()
    relaxed = lora_rank > 0
    names = _shared_names(blocks[0], relaxed)
    generator = torch.Generator().manual_seed(seed)
    shared = [g for g in plan.groups() if len(g) > 1]  # a block of its own stays as it is
    # Every value is computed before anything is tied: stepwise may initialise
    # a block from a layer of another group, which must still hold its own weights.
    values = [
        _group_values(blocks, weighting, names)
        for group, weighting in zip(plan.groups(), INITS[init](plan), strict=True)
        if len(group) > 1
    ]
    # Views of the original weights, alive until the deltas are set.
    originals = (
        {
            layer: {n: weight_out_in(m) for n, m in adapter.block_linears(blocks[layer]).items()}
            for group in shared
            for layer in group
        }
        if relaxed
        else None
    )
    for group, value in zip(shared, values, strict=True):
        _tie_group(blocks, group, value)
    if relaxed:
        for group in shared:
            _relax_group(adapter, group, originals, lora_rank, generator)
    layout = ShareLayout(plan, lora_rank)
    _mark(model, layout)
    return layout


@torch.no_grad()
def apply_layout(model: nn.Module, layout: ShareLayout, check_equal: bool = False) -> None:
    """Give a freshly built or loaded model the structure of `layout`.

    Each layer takes its group owner's parameters (the owner's current values
    stand); relaxed layers get zero deltas, to be filled by loading a state dict.

    Raises:
        BadInput: the layout does not fit the model, or (with `check_equal`)
            a layer's weights differ from its owner's, so the checkpoint is not
            the shared model the layout describes.
    """
    adapter = ArchAdapter(model)
    if layout.plan.num_layers != adapter.num_layers:
        raise BadInput(
            f"sharing map has {layout.plan.num_layers} layers, the model {adapter.num_layers}"
        )
    blocks = adapter.blocks()
    names = _shared_names(blocks[0], layout.lora_rank > 0)
    generator = torch.Generator().manual_seed(0)
    for group in layout.plan.groups():
        if len(group) == 1:
            continue
        owner = blocks[group[0]]
        for layer in group[1:]:
            for name in names:
                mine, theirs = blocks[layer].get_parameter(name), owner.get_parameter(name)
                if check_equal and not torch.equal(mine, theirs):
                    raise BadInput(
                        f"layer {layer} ({name}) differs from layer {group[0]} that it should share"
                    )
                _assign(blocks[layer], name, theirs)
        if layout.lora_rank:
            _relax_group(adapter, group, None, layout.lora_rank, generator)
    _mark(model, layout)


def tie_embeddings(model: nn.Module) -> bool:
    """Make the output head use the input embedding matrix; True if it changed anything.

    The embedding's values are kept (the head's are dropped): the input side
    is what every token passes through first. The config is updated so that
    transformers re-ties the two when it loads the saved model.

    Raises:
        BadInput: the head and the embedding have different shapes (e.g. OPT
            with a projected embedding).
    """
    adapter = ArchAdapter(model)
    embedding, head = adapter.embedding(), adapter.head()
    if head.weight is embedding.weight:
        return False
    if head.weight.shape != embedding.weight.shape:
        raise BadInput(
            f"--tie-embeddings: head {tuple(head.weight.shape)} and embedding "
            f"{tuple(embedding.weight.shape)} have different shapes"
        )
    head.weight = embedding.weight
    model.config.tie_word_embeddings = True
    return True
