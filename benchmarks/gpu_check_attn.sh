#!/usr/bin/env bash
# GPU check for issue #17 points 2 and 5 (packed attention forms, sparse scoring); JSON into $OUT.
# Under 3 minutes on one GPU: FlexAttention compiles once per shape (~30-60 s), the rest is small.
#   OUT=/tmp/out bash benchmarks/gpu_check_attn.sh
# Its checks run on the CPU in tests/test_gpu_scripts.py (gpu_check_attn.py --device cpu).
set -u
OUT=${OUT:-/tmp/gpu_check_attn}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.csv" 2>&1
# exactness on CUDA: flex and split against the dense mask (outputs and gradients); sparse PLL vs full
timeout 100 $PY benchmarks/gpu_check_attn.py --out "$OUT/attn_exact.json" > "$OUT/attn_exact.log" 2>&1
echo "attn_exact rc=$?"
# speed of the forms (not figures for the docs unless the machine is otherwise idle): bf16 and fp32
timeout 60 $PY benchmarks/attention_forms.py --device cuda --dtype bfloat16 --batch 32 --seq-len 1024 \
  --heads 12 --head-dim 64 --layers 4 --iters 5 --rounds 3 --out "$OUT/forms_bf16.json" > "$OUT/forms_bf16.log" 2>&1
echo "forms_bf16 rc=$?"
timeout 40 $PY benchmarks/attention_forms.py --device cuda --dtype bfloat16 --batch 32 --seq-len 1024 \
  --heads 12 --head-dim 64 --layers 4 --iters 5 --rounds 2 --causal --levels core \
  --out "$OUT/forms_bf16_causal.json" > "$OUT/forms_bf16_causal.log" 2>&1
echo "forms_bf16_causal rc=$?"
