"""The tokenizer as GGUF metadata: vocabulary, merges, token types, special ids.

A GGUF file carries no tokenizer.json; llama.cpp rebuilds the tokenizer from
`tokenizer.ggml.*` keys. Byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2,
SmolLM, ...) are written as `tokenizer.ggml.model = "gpt2"`, with the
pre-tokenizer named by `tokenizer.ggml.pre`. llama.cpp knows pre-tokenizers by
name only, so the name is read off the tokenizer's own pre-tokenizer (the
regex that splits text before the merges); one llama.cpp does not know would
tokenize differently there, and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gguf import GGUFWriter, TokenType

from llmopt.errors import BadInput

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@dataclass
class GGUFVocab:
    """Everything `tokenizer.ggml.*` holds for one tokenizer."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def write(self, writer: GGUFWriter) -> None:
        """Add the tokenizer keys to a GGUF writer."""
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for role, token_id in self.special_ids.items():
            adders[role](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _is(node: dict, kind: str, **fields) -> bool:
    return node.get("type") == kind and all(node.get(k) == v for k, v in fields.items())


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizers pre-tokenizer (as tokenizer.json spells it).

    Raises:
        BadInput: a pre-tokenizer llama.cpp has no name for.
    """
    pre = pre or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _is(steps[0], "ByteLevel", use_regex=True):
        return "gpt-2"
    byte_level = len(steps) == 2 and _is(steps[1], "ByteLevel", use_regex=True)
    if byte_level and _is(steps[0], "Digits", individual_digits=True):
        return "smollm"  # single digits, then the GPT-2 regex
    if len(steps) == 2 and _is(steps[0], "Split") and _is(steps[1], "ByteLevel", use_regex=False):
        name = SPLIT_NAMES.get((steps[0].get("pattern") or {}).get("Regex"))
        if name is not None:
            return name
    raise BadInput(
        f"GGUF export: the tokenizer's pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp "
        "name (known: GPT-2, SmolLM, Llama 3 and Qwen2 byte-level BPE)"
    )


def gguf_vocab(tokenizer, rows: int) -> GGUFVocab:
    """The GGUF tokenizer metadata of a fast byte-level BPE tokenizer.

    Args:
        tokenizer: a transformers fast tokenizer.
        rows: rows of the model's embedding; the vocabulary is padded to it
            with unused `[PAD{i}]` tokens, as llama.cpp's converter does.

    Raises:
        BadInput: not a byte-level BPE tokenizer llama.cpp can rebuild, or more
            tokens than embedding rows.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BadInput("GGUF export: needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise BadInput(
            f"GGUF export: only byte-level BPE tokenizers are written; this one is "
            f"{model.get('type')} with a {(spec.get('decoder') or {}).get('type')} decoder"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id: dict[int, tuple[str, int]] = {
        i: (t, TokenType.NORMAL) for t, i in model["vocab"].items()
    }
    for added in spec.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    size = max(by_id) + 1
    if size > rows:
        raise BadInput(f"GGUF export: the tokenizer has {size} tokens, the embedding {rows} rows")
    tokens, types = [], []
    for i in range(rows):
        token, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        types=types,
        merges=merges,
        special_ids=_special_ids(tokenizer),
        add_bos=_adds(tokenizer, tokenizer.bos_token_id, first=True),
        add_eos=_adds(tokenizer, tokenizer.eos_token_id, first=False),
        chat_template=tokenizer.chat_template
        if isinstance(getattr(tokenizer, "chat_template", None), str)
        else None,
    )


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return {role: int(i) for role, i in ids.items() if i is not None}


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether encoding plain text adds this special token (at the start or the end)."""
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(ids) == len(plain):
        return False
    return (ids[0] if first else ids[-1]) == token_id
