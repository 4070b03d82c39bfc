#!/usr/bin/env bash
# The GPU paths in one short run, for a lent CUDA machine (never CI): bf16/fp16/fp32
# training against the HF Trainer, MFU from the trainer's own log, fp16 distillation
# (GradScaler), Wanda 2:4 and GPTQ through the CLI on CUDA, and the 2:4
# semi-structured kernels. Weights are random (smollm2-135m's config and tokenizer,
# seeded init): speed does not depend on their values, and the 98 MB GGUF cannot
# travel. Results land in $OUT (or ./gpu-out).
#
#   prepare here:  copy smollm2-135m's config.json/tokenizer*.json into .gpu/cache/models/smollm2-135m
#                  and download the wheels the device lacks into .whl (see benchmarks/README)
#   run there:     bash benchmarks/gpu_check.sh          (ONLY="train_cli kernels_2to4" runs just those)
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 LLMOPT_CACHE=/tmp/llmopt-cache
rm -rf "$LLMOPT_CACHE" && mkdir -p "$LLMOPT_CACHE" && cp -r .gpu/cache/models "$LLMOPT_CACHE"/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

python3 - <<'EOF' || exit 1
# smollm2-135m's architecture with seeded random weights, tied head, saved as the zoo entry.
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from llmopt.cache import cache_root
folder = cache_root() / "models" / "smollm2-135m"
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
model.tie_weights()
model.save_pretrained(folder)
print("random smollm2-135m weights in", folder)
EOF

step() {  # step NAME SECONDS COMMAND...: run one check with its own limit; never stop the rest
    local name=$1 limit=$2; shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="a b": just those
    echo "=== $name"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
}

step train_vs_hf 200 python3 benchmarks/train_throughput.py --device cuda --precisions bf16,fp32 \
    --seq-len 1024 --micro 8 --steps 10 --repeats 1 --json "$OUT/train_vs_hf.json"
step train_cli 90 python3 -m llmopt.cli train smollm2-135m --output /tmp/g-train --device cuda \
    --precision auto --steps 30 --micro-batch-size 16 --seq-len 1024 --log-every 5 --run-dir /tmp/g-run
cp /tmp/g-run/metrics.jsonl "$OUT/train_metrics.jsonl" 2>/dev/null
step distill_fp16 90 python3 -m llmopt.cli distill smollm2-135m --teacher smollm2-135m --output /tmp/g-kd \
    --device cuda --precision fp16 --steps 10 --micro-batch-size 8 --seq-len 512
step distill_auto 90 python3 -m llmopt.cli distill smollm2-135m --teacher smollm2-135m --output /tmp/g-kd2 \
    --device cuda --steps 10 --micro-batch-size 8 --seq-len 512
step prune_wanda_2to4 90 python3 -m llmopt.cli prune smollm2-135m --method wanda --pattern 2:4 \
    --device cuda --output /tmp/g-wanda --accelerate-2to4 --eval --eval-speed
step quantize_gptq4 120 python3 -m llmopt.cli quantize smollm2-135m --method gptq --bits 4 \
    --device cuda --output /tmp/g-gptq
step kernels_2to4 90 python3 benchmarks/prune_gpu_2to4.py --json "$OUT/prune_gpu_2to4.json"
echo "=== done"
