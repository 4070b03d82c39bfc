"""Export a model to run elsewhere: a GGUF file (llama.cpp, Ollama) or a
compressed-tensors folder (vLLM).

GGUF types: f16, q8_0, q4_0, q4_k (rows that do not split into whole blocks
fall back to a type that fits). A model quantized by llmopt is copied without
rounding again wherever the type holds its grid (q4_0 for 4-bit symmetric
groups of a multiple of 32, q8_0 for any 4-bit grid or an 8-bit symmetric one);
compressed-tensors needs a quantized model and writes its grid as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmopt.cli.common import add_model_argument, human_bytes, print_table
from llmopt.errors import BadInput

HELP = "export to GGUF (llama.cpp) or compressed-tensors (vLLM)"
FORMATS = ("gguf", "compressed-tensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="target format")
    parser.add_argument(
        "--type", default=None, help="GGUF tensor type: f16, q8_0 (default), q4_0, q4_k"
    )
    parser.add_argument(
        "--output", "-o", required=True, help="the .gguf file, or the compressed-tensors folder"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite and (path.is_file() or any(path.iterdir())):
        raise BadInput(f"--output {path}: exists (pass --overwrite to replace it)")
    if not path.parent.exists():
        raise BadInput(f"--output {path}: its folder {path.parent} does not exist")


def run(args: argparse.Namespace) -> int:
    from llmopt.export import GGUF_TYPES, export_compressed_tensors, export_gguf
    from llmopt.models import load_model, load_tokenizer

    output = Path(args.output).expanduser()
    if args.format == "gguf":
        qtype = args.type or "q8_0"
        if qtype not in GGUF_TYPES:
            raise BadInput(f"--type {qtype!r}: unknown; known: {', '.join(GGUF_TYPES)}")
    elif args.type is not None:
        raise BadInput(f"--type {args.type!r}: only for --format gguf")
    _check_output(output, args.overwrite)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    if args.format == "gguf":
        facts = export_gguf(model, tokenizer, output, qtype)
        types = ", ".join(f"{n} {k}" for k, n in sorted(facts["tensor_types"].items()))
        exact = str(facts["exact_tensors"])
        rows = [("type", qtype), ("tensors", types), ("copied exactly", exact)]
    else:
        if output.is_dir() and args.overwrite:
            import shutil

            shutil.rmtree(output)
        facts = export_compressed_tensors(model, tokenizer, output)
        rows = [
            ("layers", f"{facts['compressed_layers']} compressed"),
            ("ignored", ", ".join(facts["ignored_linears"]) or "-"),
        ]
    rows += [("size", human_bytes(facts["bytes"])), ("written", str(output))]
    print_table(rows, title=f"{args.model} -> {args.format}")
    return 0
