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

BACKENDS = ("cusparselt", "cutlass")
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


def _backend(name: str):
    """Make `to_sparse_semi_structured` use cuSPARSELt or CUTLASS (PyTorch's switch)."""
    from torch.sparse import SparseSemiStructuredTensor

    SparseSemiStructuredTensor._FORCE_CUTLASS = name == "cutlass"


def bench_matmuls(tokens: int) -> list[dict]:
    """Each shape dense, then as a 2:4 tensor with each backend, timed side by side."""
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for out_f, in_f in SHAPES:
        w = two_four(torch.randn(out_f, in_f, device="cuda", dtype=torch.float16))
        x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
        row: dict = {"shape": [out_f, in_f], "tokens": tokens}
        row["dense_ms"] = round(cuda_time(lambda w=w, x=x: F.linear(x, w)), 4)
        for backend in BACKENDS:
            _backend(backend)
            try:
                ws = to_sparse_semi_structured(w)
                ms = cuda_time(lambda ws=ws, x=x: F.linear(x, ws))
                diff = float((F.linear(x, w) - F.linear(x, ws)).abs().max())
                row[backend] = {"ms": round(ms, 4), "speedup": round(row["dense_ms"] / ms, 2),
                                "max_abs_diff": diff}  # fmt: skip
            except (RuntimeError, ValueError) as err:
                row[backend] = {"error": str(err).splitlines()[0]}
        _backend("cusparselt")
        rows.append(row)
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

    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    report = {
        "model": name or "random llama 2048x8192x8",
        "batch": batch,
        "seq_len": seq_len,
        "sparsity": result.sparsity,
        "dense_ms": round(dense, 3),
    }
    for backend in BACKENDS:  # each converts the same dense 2:4 weights
        _backend(backend)
        copy = build_model(name).half().cuda()
        copy.load_state_dict(dense_state)

        def run_copy(copy=copy):
            return copy(ids, use_cache=False).logits

        try:
            with torch.no_grad():
                converted = to_semi_structured(list(ArchAdapter(copy).all_linears().values()))
                logits = run_copy()
                ms = cuda_time(torch.no_grad()(run_copy), reps=10)
        except RuntimeError as err:  # CUTLASS's kernels are for compute capability 8.x only
            report[backend] = {"error": str(err).splitlines()[0]}
            del copy
            continue
        report[backend] = {
            "converted_layers": converted,
            "ms": round(ms, 3),
            "speedup": round(dense / ms, 2),
            "max_abs_logit_diff": float((dense_logits - logits).abs().max()),
        }
        del copy
    _backend("cusparselt")
    return report


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
        cells = [f"{row['shape']!s:>14}  dense {row['dense_ms']:8.4f} ms"]
        for backend in BACKENDS:
            got = row[backend]
            cells.append(
                f"{backend} {got['ms']:8.4f} ms x{got['speedup']:.2f}"
                if "ms" in got
                else f"{backend}: {got['error']}"
            )
        print("  ".join(cells))
    pf = report["prefill"]
    print(f"prefill {pf['model']} {pf['batch']}x{pf['seq_len']}: dense {pf['dense_ms']:.2f} ms")
    for backend in BACKENDS:
        got = pf[backend]
        if "error" in got:
            print(f"  {backend}: {got['error']}")
            continue
        print(
            f"  {backend}: {got['ms']:.2f} ms (x{got['speedup']:.2f}, "
            f"{got['converted_layers']} layers), max |logit diff| {got['max_abs_logit_diff']:.3g}"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
