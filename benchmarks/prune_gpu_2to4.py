"""Dense vs semi-structured 2:4 sparse speed on a CUDA GPU: matmuls and a prefill.

1. `F.linear` with a dense fp16 weight vs the same 2:4 weight converted by
   `torch.sparse.to_sparse_semi_structured`, for layer shapes from small
   (smollm2-135m) to 7B-sized, at a prefill-sized batch of tokens;
2. the prefill of a 2:4-pruned Llama (random weights, by default 1B-sized, or
   any --model llmopt can load) before and after `--accelerate-2to4`'s
   conversion, with the largest output difference.

Without CUDA it says so and exits 0. Writes JSON and prints a table.

    .venv/bin/python benchmarks/prune_gpu_2to4.py [--model smollm2-135m] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]


def cuda_time(fn, reps: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of `fn()` over `reps` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """Zero the 2 smallest of every 4 consecutive inputs of each row."""
    from llmopt.prune.masks import nm_mask
    from llmopt.sparsity import Pattern

    return weight.masked_fill(nm_mask(weight.abs().float(), Pattern(2, 4)), 0)


def bench_matmuls(tokens: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_f, in_f in SHAPES:
        w = two_four(torch.randn(out_f, in_f, device="cuda", dtype=torch.float16))
        x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
        try:
            ws = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError) as err:
            rows.append({"shape": [out_f, in_f], "error": str(err).splitlines()[0]})
            continue
        dense = cuda_time(lambda w=w, x=x: F.linear(x, w))
        sparse = cuda_time(lambda ws=ws, x=x: F.linear(x, ws))
        diff = float((F.linear(x, w) - F.linear(x, ws)).abs().max())
        rows.append(
            {
                "shape": [out_f, in_f],
                "tokens": tokens,
                "dense_ms": round(dense, 4),
                "sparse_ms": round(sparse, 4),
                "speedup": round(dense / sparse, 2),
                "max_abs_diff": diff,
            }
        )
    return rows


def build_model(name: str | None):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmopt.models import load_model

    if name:
        return load_model(name)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=2048,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def bench_prefill(name: str | None, batch: int, seq_len: int) -> dict:
    from llmopt.prune import PruneConfig, prune_model
    from llmopt.prune.semistructured import to_semi_structured

    model = build_model(name)
    result = prune_model(model, None, PruneConfig(method="magnitude", pattern="2:4"))
    model = model.half().cuda()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device="cuda")

    @torch.no_grad()
    def prefill():
        return model(ids, use_cache=False).logits

    dense_logits = prefill()
    dense = cuda_time(prefill, reps=10)
    from llmopt.models.arch import ArchAdapter

    converted = to_semi_structured(list(ArchAdapter(model).all_linears().values()))
    sparse_logits = prefill()
    sparse = cuda_time(prefill, reps=10)
    return {
        "model": name or "random llama 2048x8192x8",
        "batch": batch,
        "seq_len": seq_len,
        "sparsity": result.sparsity,
        "converted_layers": converted,
        "dense_ms": round(dense, 3),
        "sparse_ms": round(sparse, 3),
        "speedup": round(dense / sparse, 2),
        "max_abs_logit_diff": float((dense_logits - sparse_logits).abs().max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="llmopt model spec (default: random 1B-sized)")
    p.add_argument("--tokens", type=int, default=4096, help="rows of the matmul input")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--json", default="benchmarks/results/prune_gpu_2to4.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: semi-structured 2:4 kernels need an NVIDIA GPU; skipped")
        return
    torch.manual_seed(0)
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "matmuls": bench_matmuls(args.tokens),
        "prefill": bench_prefill(args.model, args.batch, args.seq_len),
    }
    for row in report["matmuls"]:
        if "error" in row:
            print(f"{row['shape']!s:>14}  not supported: {row['error']}")
        else:
            print(
                f"{row['shape']!s:>14}  dense {row['dense_ms']:8.4f} ms  "
                f"2:4 {row['sparse_ms']:8.4f} ms  x{row['speedup']:.2f}"
            )
    pf = report["prefill"]
    print(
        f"prefill {pf['model']} {pf['batch']}x{pf['seq_len']}: dense {pf['dense_ms']:.2f} ms, "
        f"2:4 {pf['sparse_ms']:.2f} ms (x{pf['speedup']:.2f}, {pf['converted_layers']} layers), "
        f"max |logit diff| {pf['max_abs_logit_diff']:.3g}"
    )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
