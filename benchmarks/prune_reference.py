"""Prune with llm-compressor, the reference of benchmarks/prune.py (run by another interpreter).

This script imports nothing from llmopt: it runs in the reference's own
environment (`--reference-python PATH` of prune.py). It reads the calibration
token blocks prune.py sampled (a safetensors file), prunes the model with
llm-compressor's Wanda or SparseGPT modifier through `oneshot` (timed: wall
and CPU seconds of that call alone), and saves the pruned model as a plain
checkpoint, which prune.py then scores with the same perplexity code as
llmopt's own result. Prints one JSON line.

    REF/bin/python benchmarks/prune_reference.py MODEL_DIR CALIB.safetensors OUT_DIR \\
        --method wanda --pattern 2:4

The reference environment (measured with llmcompressor 0.14.0.1, torch 2.13.0):
`python3 -m venv REF`, then `REF/bin/pip install` a CPU build of torch==2.13.0
first (so pip does not pull a CUDA build), then `REF/bin/pip install llmcompressor`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def _modifier(method: str, pattern: str):
    structure = "0:0" if pattern == "unstructured" else pattern
    common = dict(
        sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"]
    )  # as llmopt: decoder-block linears only
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(**common)
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return SparseGPTModifier(**common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("calibration", help="safetensors file with 'ids' [samples, seq_len]")
    parser.add_argument("output")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    ids = load_file(args.calibration)["ids"]
    data = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()}
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    start, cpu = time.perf_counter(), time.process_time()
    oneshot(
        model=model,
        dataset=data,
        recipe=_modifier(args.method, args.pattern),
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        batch_size=args.batch_size,
        shuffle_calibration_samples=False,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    model.save_pretrained(args.output, save_compressed=False)  # a plain dense checkpoint
    print(json.dumps({
        "prune_s": round(wall, 2),
        "prune_cpu_s": round(cpu, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
