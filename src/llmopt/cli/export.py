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

from llmopt.errors import BadInput

HELP = "export to GGUF (llama.cpp) or compressed-tensors (vLLM)"
FORMATS = ("gguf", "compressed-tensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="an llmopt output folder (any format), a zoo name or hub id"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="target format")
    parser.add_argument(
        "--type", default=None, help="GGUF tensor type: f16, q8_0 (default), q4_0, q4_k"
    )
    parser.add_argument(
        "--output", "-o", required=True, help="the .gguf file, or the compressed-tensors folder"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _check_output(path: Path, overwrite: bool) -> None:
    from llmopt.outputs import check_parent

    if path.exists() and not overwrite and (path.is_file() or any(path.iterdir())):
        raise BadInput(f"--output {path}: exists (pass --overwrite to replace it)")
    check_parent(path, "--output")


def run(args: argparse.Namespace) -> int:
    from llmopt.cli.stages import print_table
    from llmopt.export import GGUF_TYPES, export_compressed_tensors, export_gguf
    from llmopt.export.gguf import FAMILIES
    from llmopt.models import load_tokenizer
    from llmopt.pipeline.formats import load_checkpoint, open_source
    from llmopt.units import human_bytes

    output = Path(args.output).expanduser()
    if args.format == "gguf":
        qtype = args.type or "q8_0"
        if qtype not in GGUF_TYPES:
            raise BadInput(f"--type {qtype!r}: unknown; known: {', '.join(GGUF_TYPES)}")
    elif args.type is not None:
        raise BadInput(f"--type {args.type!r}: only for --format gguf")
    _check_output(output, args.overwrite)
    source = open_source(args.model)
    family = source.hf_config.model_type
    if args.format == "gguf" and family not in FAMILIES:  # before loading any weights
        raise BadInput(
            f"--format gguf: model family {family!r} has no GGUF mapping; "
            f"supported: {', '.join(FAMILIES)}"
        )
    tokenizer = load_tokenizer(args.model)
    model = load_checkpoint(source)
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
