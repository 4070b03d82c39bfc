"""One adapter per model family: the only place that knows attribute names.

Pruning, slimming and sharing ask an `ArchAdapter` where the decoder blocks,
the attention and MLP projections, the norms, the embeddings and the head are.
Adding a family means adding one `ArchSpec` to `SPECS`.

Linear layers are returned as modules; `weight_out_in` gives every weight in
the (out_features, in_features) orientation of `nn.Linear`, also for GPT-2's
`Conv1D`, whose weight is stored transposed (`stored_weight` turns such a
weight back into the module's own orientation).

The `config_*` functions read the sizes that structural slimming changes from a
transformers config alone, so a stage can check a request before any model is
loaded; `ArchSpec` names the config keys that hold them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from llmopt.errors import BadInput


@dataclass(frozen=True)
class ArchSpec:
    """Where one family keeps its parts. Paths are dotted attribute names."""

    family: str
    model_types: tuple[str, ...]
    backbone: str
    """Path from the causal-LM wrapper to the module that owns the blocks."""
    blocks: str
    """Attribute of the backbone holding the `nn.ModuleList` of decoder blocks."""
    embed: str
    """Token embedding, relative to the backbone."""
    final_norm: str | None
    """Final norm, relative to the backbone (None where the family has none)."""
    attn: str
    """Attention module, relative to a block."""
    mlp: str
    """MLP module, relative to a block ('' where the block itself holds the MLP)."""
    attn_in: tuple[str, ...]
    """Linears that read the block's normalised input for attention (q, k, v or fused qkv)."""
    attn_out: tuple[str, ...]
    mlp_in: tuple[str, ...]
    mlp_out: tuple[str, ...]
    norms: tuple[str, ...]
    """Norms inside a block, relative to the block."""
    pos_embed: str | None = None
    """Learned position embedding, relative to the backbone (None for rotary)."""
    fused_qkv: str | None = None
    """Layout of a fused qkv projection: '3hd' (GPT-2) or 'h3d' (GPT-NeoX).

    Where it is None, `attn_in` lists the separate projections in the order q, k, v."""
    ffn_key: str = "intermediate_size"
    """Config key of the MLP width (channels between `mlp_in` and `mlp_out`)."""
    ffn_default_factor: int | None = None
    """Where the config may leave the MLP width unset (GPT-2's n_inner): width = factor * hidden."""
    head_dim_key: str | None = None
    """Config key the attention reads its head size from; None where the family
    derives it as hidden_size // num_attention_heads, so that fewer heads at the
    same head size cannot be expressed."""
    kv_heads_key: str | None = None
    """Config key of the number of key/value heads (grouped-query attention); None: one per head."""
    per_layer_keys: tuple[str, ...] = ()
    """Config keys holding one entry per decoder layer (sliced when layers are removed)."""


SPECS: tuple[ArchSpec, ...] = (
    ArchSpec(
        family="llama",
        model_types=("llama", "qwen2", "mistral"),
        backbone="model",
        blocks="layers",
        embed="embed_tokens",
        final_norm="norm",
        attn="self_attn",
        mlp="mlp",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out=("self_attn.o_proj",),
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out=("mlp.down_proj",),
        norms=("input_layernorm", "post_attention_layernorm"),
        head_dim_key="head_dim",
        kv_heads_key="num_key_value_heads",
        per_layer_keys=("layer_types",),
    ),
    ArchSpec(
        family="gpt2",
        model_types=("gpt2",),
        backbone="transformer",
        blocks="h",
        embed="wte",
        pos_embed="wpe",
        final_norm="ln_f",
        attn="attn",
        mlp="mlp",
        attn_in=("attn.c_attn",),
        attn_out=("attn.c_proj",),
        mlp_in=("mlp.c_fc",),
        mlp_out=("mlp.c_proj",),
        norms=("ln_1", "ln_2"),
        fused_qkv="3hd",
        ffn_key="n_inner",
        ffn_default_factor=4,
    ),
    ArchSpec(
        family="opt",
        model_types=("opt",),
        backbone="model.decoder",
        blocks="layers",
        embed="embed_tokens",
        pos_embed="embed_positions",
        final_norm="final_layer_norm",
        attn="self_attn",
        mlp="",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out=("self_attn.out_proj",),
        mlp_in=("fc1",),
        mlp_out=("fc2",),
        norms=("self_attn_layer_norm", "final_layer_norm"),
        ffn_key="ffn_dim",
    ),
    ArchSpec(
        family="gpt_neox",
        model_types=("gpt_neox",),
        backbone="gpt_neox",
        blocks="layers",
        embed="embed_in",
        final_norm="final_layer_norm",
        attn="attention",
        mlp="mlp",
        attn_in=("attention.query_key_value",),
        attn_out=("attention.dense",),
        mlp_in=("mlp.dense_h_to_4h",),
        mlp_out=("mlp.dense_4h_to_h",),
        norms=("input_layernorm", "post_attention_layernorm"),
        fused_qkv="h3d",
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for s in SPECS for t in s.model_types)


def spec_for(model_type: str) -> ArchSpec:
    """Return the spec of a Hugging Face `model_type`.

    Raises:
        BadInput: the family is not supported; the message lists those that are.
    """
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    raise BadInput(
        f"model family {model_type!r} is not supported; supported: "
        + ", ".join(SUPPORTED_MODEL_TYPES)
    )


def qkv_names(spec: ArchSpec) -> tuple[str, str, str]:
    """The separate q, k and v projections of a block, relative to the block.

    Raises:
        ValueError: the family fuses q, k and v into one linear.
    """
    if spec.fused_qkv is not None or len(spec.attn_in) != 3:
        raise ValueError(f"{spec.family} has a fused qkv projection")
    q, k, v = spec.attn_in
    return q, k, v


def config_num_heads(config) -> int:
    """Query heads per layer, from a transformers config."""
    return int(config.num_attention_heads)


def config_kv_heads(config) -> int:
    """Key/value heads per layer (= query heads without grouped-query attention)."""
    return int(getattr(config, "num_key_value_heads", None) or config_num_heads(config))


def config_head_dim(config) -> int:
    """Size of one attention head (explicit where the config says, else hidden / heads)."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit or config.hidden_size // config_num_heads(config))


def config_ffn_width(spec: ArchSpec, config) -> int:
    """Channels of one MLP (intermediate size), from a transformers config."""
    value = getattr(config, spec.ffn_key, None)
    if value is None and spec.ffn_default_factor is not None:
        value = spec.ffn_default_factor * config.hidden_size
    if value is None:
        raise ValueError(f"{spec.family} config has no {spec.ffn_key!r}")
    return int(value)


def config_num_layers(config) -> int:
    """Decoder layers, from a transformers config."""
    return int(config.num_hidden_layers)


def set_config_sizes(
    spec: ArchSpec,
    config,
    layers: int | None = None,
    ffn: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
) -> None:
    """Write new sizes into a transformers config (in place); None leaves a size as it is.

    Changing the head counts pins the head size explicitly first, so that it stays
    what it was instead of becoming hidden_size // fewer heads.

    Raises:
        ValueError: head counts change in a family whose config cannot express that.
    """
    if heads is not None or kv_heads is not None:
        if spec.head_dim_key is None or spec.kv_heads_key is None:
            raise ValueError(f"{spec.family} configs cannot express fewer attention heads")
        setattr(config, spec.head_dim_key, config_head_dim(config))
        if heads is not None:
            config.num_attention_heads = heads
        if kv_heads is not None:
            setattr(config, spec.kv_heads_key, kv_heads)
    if layers is not None:
        config.num_hidden_layers = layers
    if ffn is not None:
        setattr(config, spec.ffn_key, ffn)


def config_max_positions(config) -> int:
    """Positions the model can attend over (2048 where the config does not say)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return 2048


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted attribute path ('' is the root itself)."""
    obj = root
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the module at a dotted attribute path."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_path(root, parent_path), name, module)


def is_linear(module: nn.Module) -> bool:
    """True for `nn.Linear` and GPT-2's transposed `Conv1D`."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features, in_features) view; writes go to the module."""
    if isinstance(module, nn.Linear):
        return module.weight.data
    if type(module).__name__ == "Conv1D":
        return module.weight.data.t()
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def stored_weight(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """An (out_features, in_features) weight laid out as `module` stores it (inverse of
    `weight_out_in`): transposed for GPT-2's `Conv1D`, as it is for `nn.Linear`."""
    if isinstance(module, nn.Linear):
        return weight
    if type(module).__name__ == "Conv1D":
        return weight.t().contiguous()
    raise TypeError(f"not a linear layer: {type(module).__name__}")


class ArchAdapter:
    """A model together with the spec of its family.

    Raises (on construction):
        BadInput: the model's family is not supported.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.spec = spec_for(getattr(model.config, "model_type", type(model).__name__))

    @property
    def backbone(self) -> nn.Module:
        return get_path(self.model, self.spec.backbone)

    def blocks(self) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return get_path(self.backbone, self.spec.blocks)

    @property
    def blocks_path(self) -> str:
        """Dotted path of the block list from the wrapper, e.g. 'model.layers'."""
        return f"{self.spec.backbone}.{self.spec.blocks}"

    @property
    def num_layers(self) -> int:
        return len(self.blocks())

    def embedding(self) -> nn.Embedding:
        return get_path(self.backbone, self.spec.embed)

    def head(self) -> nn.Module:
        """The output projection (named differently across families and versions)."""
        return self.model.get_output_embeddings()

    def position_embedding(self) -> nn.Module | None:
        return get_path(self.backbone, self.spec.pos_embed) if self.spec.pos_embed else None

    def final_norm(self) -> nn.Module | None:
        if self.spec.final_norm is None:
            return None
        # OPT variants that normalise after each block set this to None.
        return get_path(self.backbone, self.spec.final_norm)

    def attention(self, block: nn.Module) -> nn.Module:
        return get_path(block, self.spec.attn)

    def mlp(self, block: nn.Module) -> nn.Module:
        return get_path(block, self.spec.mlp)

    def norms(self, block: nn.Module) -> dict[str, nn.Module]:
        return {name: get_path(block, name) for name in self.spec.norms}

    def linear_names(self) -> tuple[str, ...]:
        """Names of a block's linears, relative to the block, in forward order."""
        s = self.spec
        return s.attn_in + s.attn_out + s.mlp_in + s.mlp_out

    def block_linears(self, block: nn.Module) -> dict[str, nn.Module]:
        """A block's linear layers by relative name, in forward order."""
        return {name: get_path(block, name) for name in self.linear_names()}

    def all_linears(self) -> dict[str, nn.Module]:
        """Every decoder-block linear by full name ('model.layers.3.mlp.up_proj')."""
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(self.blocks()):
            for name, module in self.block_linears(block).items():
                out[f"{self.blocks_path}.{i}.{name}"] = module
        return out

    @property
    def num_heads(self) -> int:
        return config_num_heads(self.config)

    @property
    def num_kv_heads(self) -> int:
        return config_kv_heads(self.config)

    @property
    def head_dim(self) -> int:
        return config_head_dim(self.config)

    @property
    def ffn_width(self) -> int:
        return config_ffn_width(self.spec, self.config)

    @property
    def max_positions(self) -> int:
        return config_max_positions(self.config)


def select_block_linears(
    adapter: ArchAdapter, targets: str | None, skip: str | None
) -> dict[int, dict[str, nn.Module]]:
    """The decoder-block linears whose full names (`model.layers.3.mlp.up_proj`) match
    the `targets` regex and not the `skip` regex (None: no filter), per block index.

    Raises:
        BadInput: a regex that does not compile (named by its flag).
    """
    keep, drop = _regex("--targets", targets), _regex("--skip", skip)
    chosen: dict[int, dict[str, nn.Module]] = {}
    for index, block in enumerate(adapter.blocks()):
        for name, module in adapter.block_linears(block).items():
            full = f"{adapter.blocks_path}.{index}.{name}"
            if keep is not None and not keep.search(full):
                continue
            if drop is not None and drop.search(full):
                continue
            chosen.setdefault(index, {})[name] = module
    return chosen


def _regex(flag: str, pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise BadInput(f"{flag} {pattern!r}: not a regular expression ({err})") from None
