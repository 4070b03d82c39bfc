"""Weight quantization side by side: bytes, held-out perplexity and time; llm-compressor; GGUF.

On smollm2-135m: RTN and GPTQ at 8 and 4 bits, 2:4 SparseGPT + GPTQ 4-bit in
one walk, each saved in llmopt's compact format (bytes on disk) and scored on
the pydoc validation split. With --reference-python (a separate environment
with llm-compressor), the same GPTQ on the same calibration blocks runs there
and its time and perplexity are printed beside ours. The GGUF exports
(q8_0, q4_0, q4_k of the dense model; q4_0 of the GPTQ 4-bit model, which is
copied without rounding again) are loaded back through transformers and
scored the same way. SmolLM2's widths (576, 1536) have no 128-wide groups:
groups of 64 are the default.

    .venv/bin/python benchmarks/quantize.py --quick
    .venv/bin/python benchmarks/quantize.py --reference-python /tmp/llmc/bin/python
    .venv/bin/python benchmarks/quantize.py --quick --only gptq-4,reference --no-gguf \
        --reference-python /tmp/llmc/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

REFERENCE = """
import json, math, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier

a = json.loads(sys.argv[1])
calib = torch.load(a["calib"], weights_only=True)
ids = torch.load(a["eval"], weights_only=True)
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
n, seq = calib.shape
data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": [[1] * seq] * n})
weights = {"num_bits": a["bits"], "type": "int", "symmetric": True, "strategy": "group",
           "group_size": a["group_size"]}
recipe = GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}},
                      ignore=["lm_head"], block_size=a["blocksize"], dampening_frac=a["damp"],
                      actorder="static" if a["act_order"] else None)
t0, c0 = time.perf_counter(), time.process_time()
oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=seq, num_calibration_samples=n)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
total, count = 0.0, 0
with torch.no_grad():
    for s in range(0, ids.numel(), a["seq_len"]):
        chunk = ids[s : s + a["seq_len"]][None]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
ppl = math.exp(total / count)
print(json.dumps({"quantize_s": wall, "quantize_cpu_s": cpu, "perplexity": ppl}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=65536)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--reference-python", default=None, help="python of an llm-compressor venv")
    p.add_argument(
        "--no-act-order",
        dest="act_order",
        action="store_false",
        help="GPTQ in column order (default: static activation order, llm-compressor's default)",
    )
    p.add_argument("--only", default=None, help="comma-separated rows, e.g. gptq-4,reference")
    p.add_argument("--no-gguf", action="store_true")
    p.add_argument("--quick", action="store_true", help="16 x 256 calibration, 8192 eval tokens")
    p.add_argument("--json", default="benchmarks/results/quantize.json")
    args = p.parse_args(argv)
    if args.quick:
        args.calib_samples, args.calib_seq_len, args.eval_max_tokens = 16, 256, 8192
    return args


def settings(args: argparse.Namespace) -> dict[str, dict]:
    """Our configurations, by row name."""
    common = {"group_size": args.group_size, "calib_samples": args.calib_samples}
    common["calib_seq_len"] = args.calib_seq_len
    order = {"act_order": args.act_order}  # N:M groups need the columns in order
    return {
        "rtn-8": {"method": "rtn", "bits": 8, **common},
        "rtn-4": {"method": "rtn", "bits": 4, **common},
        "gptq-8": {"method": "gptq", "bits": 8, **order, **common},
        "gptq-4": {"method": "gptq", "bits": 4, **order, **common},
        "gptq-4 + 2:4": {"method": "gptq", "bits": 4, "pattern": "2:4", **common},
    }


def perplexity(model, ids: torch.Tensor, seq_len: int) -> float:
    from llmopt.evaluate.perplexity import evaluate_perplexity

    return round(evaluate_perplexity(model, ids, seq_len=seq_len, progress=False).perplexity, 3)


def dense_row(args, ids, work: Path) -> dict:
    from llmopt.models import load_model

    model = load_model(args.model)
    model.save_pretrained(work / "dense")
    size = sum(p.stat().st_size for p in (work / "dense").glob("*.safetensors"))
    return {"name": "dense fp32", "bytes": size, "perplexity": perplexity(model, ids, args.seq_len)}


def our_row(args, name: str, values: dict, tokenizer, ids, work: Path):
    """Quantize one copy of the model (timed), save it compactly, score it."""
    from llmopt.models import load_model
    from llmopt.quantize import QuantizeConfig, quantize_model
    from llmopt.quantize.storage import WEIGHTS_FILE, save_quantized_model

    model = load_model(args.model)
    t0, c0 = time.perf_counter(), time.process_time()
    facts = quantize_model(model, tokenizer, QuantizeConfig(**values), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    folder = work / name.replace(" ", "").replace(":", "-").replace("+", "_")
    saved = save_quantized_model(model, folder)
    row = {
        "name": name,
        "bytes": (folder / WEIGHTS_FILE).stat().st_size,
        "linear_bytes": saved["quantized_bytes"],
        "linear_ratio": round(saved["quantized_bytes"] / saved["quantized_fp32_bytes"], 4),
        "sparsity": facts["sparsity"],
        "perplexity": perplexity(model, ids, args.seq_len),
        "quantize_s": round(wall, 1),
        "quantize_cpu_s": round(cpu, 1),
    }
    return row, model


def reference_row(args, tokenizer, ids, work: Path) -> dict:
    """llm-compressor's GPTQ W4A16 (same groups, blocks and calibration) in its own python."""
    from llmopt.calibrate import load_calibration
    from llmopt.models import load_model, resolve_model
    from llmopt.quantize import QuantizeConfig

    config = QuantizeConfig(**settings(args)["gptq-4"])
    calib = load_calibration(config, tokenizer, load_model(args.model), None, progress=False)
    torch.save(calib.ids, work / "calib.pt")
    torch.save(ids, work / "eval.pt")
    (work / "reference.py").write_text(REFERENCE)
    spec = {
        "model": str(resolve_model(args.model)),
        "calib": str(work / "calib.pt"),
        "eval": str(work / "eval.pt"),
        "bits": 4,
        "group_size": args.group_size,
        "blocksize": config.blocksize,
        "damp": config.damp,
        "seq_len": args.seq_len,
        "act_order": args.act_order,
    }
    cmd = [args.reference_python, str(work / "reference.py"), json.dumps(spec)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "name": "llm-compressor gptq-4",
        "perplexity": round(result["perplexity"], 3),
        "quantize_s": round(result["quantize_s"], 1),
        "quantize_cpu_s": round(result["quantize_cpu_s"], 1),
    }


def gguf_rows(args, tokenizer, ids, work: Path, gptq4) -> list[dict]:
    """Export to GGUF, load back through transformers, score."""
    from transformers import AutoModelForCausalLM

    from llmopt.export import export_gguf
    from llmopt.models import load_model

    dense = load_model(args.model)
    rows = []
    for label, model, qtype in [
        ("gguf q8_0", dense, "q8_0"),
        ("gguf q4_0", dense, "q4_0"),
        ("gguf q4_k", dense, "q4_k"),
        ("gguf q4_0 of gptq-4", gptq4, "q4_0"),
    ]:
        path = work / f"{label.replace(' ', '-')}.gguf"
        facts = export_gguf(model, tokenizer, path, qtype)
        back = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name, dtype=torch.float32)
        rows.append(
            {
                "name": label,
                "bytes": facts["bytes"],
                "exact_tensors": facts["exact_tensors"],
                "perplexity": perplexity(back.eval(), ids, args.seq_len),
            }
        )
    return rows


def print_row(row: dict) -> None:
    mib = f"{row['bytes'] / 2**20:8.1f}" if "bytes" in row else f"{'-':>8}"
    linear = f"{row['linear_ratio']:6.3f}" if "linear_ratio" in row else f"{'-':>6}"
    quant = f"{row['quantize_s']:7.1f}" if "quantize_s" in row else f"{'-':>7}"
    cpu = f"{row['quantize_cpu_s']:7.1f}" if "quantize_cpu_s" in row else f"{'-':>7}"
    ppl = f"{row['perplexity']:9.3f}"
    print(f"{row['name']:>22}  {mib}  {linear}  {ppl}  {quant}  {cpu}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from llmopt.data.corpus import load_corpus
    from llmopt.models import load_tokenizer
    from llmopt.models.compat import quiet_transformers

    quiet_transformers()
    args = parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    ids = load_corpus("pydoc", tokenizer, split="validation").ids[: args.eval_max_tokens]
    print(f"{'':>22}  {'MiB':>8}  {'lin/fp':>6}  {'ppl':>9}  {'quant s':>7}  {'cpu s':>7}")
    rows, models = [], {}
    chosen = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return chosen is None or name in chosen

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if wanted("dense"):
            rows.append(dense_row(args, ids, work))
            print_row(rows[-1])
        for name, values in settings(args).items():
            if wanted(name):
                row, models[name] = our_row(args, name, values, tokenizer, ids, work)
                rows.append(row)
                print_row(row)
                if name != "gptq-4":
                    del models[name]
        if args.reference_python and wanted("reference"):
            rows.append(reference_row(args, tokenizer, ids, work))
            print_row(rows[-1])
        if not args.no_gguf and "gptq-4" in models:
            for row in gguf_rows(args, tokenizer, ids, work, models["gptq-4"]):
                rows.append(row)
                print_row(row)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
