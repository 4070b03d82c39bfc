"""One adapter per model family: the only place that knows attribute names.

Pruning, slimming and sharing ask an `ArchAdapter` where the decoder blocks,
the attention and MLP projections, the norms, the embeddings and the head are.
Adding a family means adding one `ArchSpec` to `SPECS`.

Linear layers are returned as modules; `weight_out_in` gives every weight in
the (out_features, in_features) orientation of `nn.Linear`, also for GPT-2's
`Conv1D`, whose weight is stored transposed.
"""

from __future__ import annotations

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
    """Layout of a fused qkv projection: '3hd' (GPT-2) or 'h3d' (GPT-NeoX)."""


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
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        explicit = getattr(self.config, "head_dim", None)
        return int(explicit or self.config.hidden_size // self.num_heads)

    @property
    def max_positions(self) -> int:
        cfg = self.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if value:
                return int(value)
        return 2048
