#!/usr/bin/env bash
# Every GPU check issue #17 asks for, in one run on a lent GPU machine (an H200: under 8 minutes). Installs
# nothing: it says what is missing and runs what it can. Writes JSON (and each step's log) to $OUT.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Steps, each under its own timeout, skipped (with a line saying so) when the overall budget would be passed:
#   env          torch/CUDA/GPU, transformers, accelerate, triton               -> env.json
#   e2e-128      masklm train vs HF Trainer --bf16, BERT base, 32x128, 2 rounds  -> train_e2e_base_128.json
#   e2e-512      the same at 512 tokens (batch 16)                              -> train_e2e_base_512.json
#   precision    masklm train --precision fp32/bf16/fp16 on CUDA, 50 steps tiny -> precision_cuda.json
#   inference    fill-mask --dtype float32/bfloat16, and bfloat16 --compile     -> inference_cuda.json
#   compile      masklm train BERT small bf16 with and without --compile         -> compile_cuda.json
#   parts        where a BERT base bf16 step goes, matrix products vs the rest    -> step_parts_cuda.json
# Other helpers may append steps below the last one (keep the budget: BUDGET_S in total).
# SMOKE=1 runs every step on the CPU with tiny shapes and --compile forced to its eager fallback: it checks
# this script, not the GPU (the HF side still needs transformers and accelerate).
# tests/test_gpu_scripts.py runs SMOKE=1, so a change that breaks a step fails the suite, not the GPU run.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET_S=${BUDGET_S:-460}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PY WORK
START=$SECONDS
if [ "${SMOKE:-0}" = 1 ]; then
  export DEVICE=cpu STEPS=4 CXX=/nonexistent/c++
  SHAPE_128=(--size tiny --vocab-size 2048 --seq-len 64 --batch-size 8 --steps 5 --warmup-steps 2 --rounds 1)
  SHAPE_512=(--size tiny --vocab-size 2048 --seq-len 128 --batch-size 4 --steps 5 --warmup-steps 2 --rounds 1)
  VOCAB=2048
  PARTS=(--size tiny --vocab-size 2048 --seq-len 64 --batch-size 8 --steps 2 --rounds 1 --warmup 1)
else
  export DEVICE=cuda STEPS=50
  SHAPE_128=(--size base --seq-len 128 --batch-size 32 --steps 60 --warmup-steps 20 --rounds 2)
  SHAPE_512=(--size base --seq-len 512 --batch-size 16 --steps 50 --warmup-steps 15 --rounds 2)
  VOCAB=8192
  PARTS=(--size base --seq-len 128 --batch-size 32 --steps 10 --rounds 2 --warmup 5)
fi

# step NAME TIMEOUT_S COMMAND...: stdout -> $OUT/NAME.out, stderr -> $OUT/NAME.log; one status line.
step() {
  local name=$1 limit=$(( $2 * ${TIMEOUT_SCALE:-1} ))
  shift 2
  if (( SECONDS - START + limit > BUDGET_S )); then
    echo "== $name: skipped (would pass the ${BUDGET_S}s budget at $((SECONDS - START))s)"
    return 0
  fi
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0))s$([ $rc -eq 124 ] && echo " (timed out after ${limit}s)")"
  tail -n 2 "$OUT/$name.out"
  [ $rc -ne 0 ] && tail -n 5 "$OUT/$name.log"
  return 0
}

echo "== env"
$PY - >"$OUT/env.json" <<'EOF'
import importlib.util, json, os
info = {"missing": []}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name() if info["cuda"] else None
    info["bf16"] = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
except ImportError:
    info["missing"].append("torch")
for mod in ("transformers", "accelerate", "triton"):
    spec = importlib.util.find_spec(mod)
    if spec is None:
        info["missing"].append(mod)
    else:
        info[mod] = getattr(__import__(mod), "__version__", "?")
info["cpus"] = os.cpu_count()
print(json.dumps(info))
EOF
cat "$OUT/env.json"
if [ "$DEVICE" = cuda ] && ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "no CUDA device: nothing to check here"; exit 1
fi
HF_FLAG=""
if ! $PY -c 'import transformers, accelerate' 2>/dev/null; then
  HF_FLAG="--skip-hf"
  echo "transformers or accelerate is missing: the end-to-end runs measure masklm alone (no HF Trainer anchor)"
fi
$PY -c 'import triton' 2>/dev/null || echo "triton is missing: --compile falls back to eager (the compile step says so)"

E2E=(benchmarks/train_e2e.py --device "$DEVICE" --precision bf16 --work "$WORK" $HF_FLAG)
step train_e2e_base_128 200 $PY "${E2E[@]}" "${SHAPE_128[@]}" --json-out "$OUT/train_e2e_base_128.json"
step train_e2e_base_512 200 $PY "${E2E[@]}" "${SHAPE_512[@]}" --json-out "$OUT/train_e2e_base_512.json"

# The tokenizer the e2e runs trained on kjv serves the checks below; train one if they were skipped.
export TOK="$WORK/prep-$VOCAB/tokenizer"
[ -f "$TOK/tokenizer.json" ] || timeout 120 $PY -m masklm tokenizer train --corpus kjv --vocab-size "$VOCAB" \
  --out "$TOK" >/dev/null 2>&1

precision_check() {
  for p in fp32 bf16 fp16; do
    $PY -m masklm train --corpus kjv --tokenizer "$TOK" --size tiny --seq-len 128 --batch-size 32 \
      --max-steps "$STEPS" --log-every "$STEPS" --precision "$p" --device "$DEVICE" --out "$WORK/prec-$p" --no-progress || return 1
  done
  $PY - "$WORK" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path
work, steps = Path(sys.argv[1]), int(sys.argv[2])
loss = {}
for p in ("fp32", "bf16", "fp16"):
    recs = [json.loads(l) for l in (work / f"prec-{p}" / "metrics.jsonl").read_text().splitlines()]
    loss[p] = next(r["loss"] for r in recs if r["step"] == steps and r["objective"] == "mlm")
rel = {p: abs(loss[p] - loss["fp32"]) / loss["fp32"] for p in ("bf16", "fp16")}
print(json.dumps({"check": "precision_cuda", "steps": steps, "loss": loss, "rel_diff_to_fp32": rel,
                  "within_2pct": all(v <= 0.02 for v in rel.values())}))
EOF
}
export -f precision_check
step precision_cuda 80 bash -c precision_check

inference_check() {
  local model="$WORK/prec-bf16/final" text="In the beginning God created the [MASK] and the earth."
  [ -d "$model" ] || model="$WORK/prec-fp32/final"
  [ -d "$model" ] || { echo "no trained model (the precision step did not run)"; return 1; }
  for v in "float32" "bfloat16" "bfloat16 --compile"; do
    $PY -m masklm fill-mask "$text" --model "$model" --device "$DEVICE" --dtype $v --json >"$WORK/fill-${v// /}.json" || return 1
  done
  $PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
res = {v: json.loads((work / f"fill-{v}.json").read_text()) for v in ("float32", "bfloat16", "bfloat16--compile")}
top = {v: [c["token_str"] for c in r] for v, r in res.items()}
print(json.dumps({"check": "inference_cuda", "top_k": top,
                  "same_top1": len({t[0] for t in top.values()}) == 1}))
EOF
}
export -f inference_check
step inference_cuda 60 bash -c inference_check

compile_check() {
  for c in eager compile; do
    $PY -m masklm train --corpus kjv --tokenizer "$TOK" --size small --seq-len 128 --batch-size 32 \
      --max-steps $((STEPS + 10)) --log-every 1 --precision bf16 --device "$DEVICE" --out "$WORK/comp-$c" --no-progress \
      $([ $c = compile ] && echo --compile) || return 1
  done
  $PY - "$WORK" "$STEPS" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from train_e2e import masklm_rate
work, warmup = Path(sys.argv[1]), min(20, int(sys.argv[2]) // 2)
out = {c: masklm_rate(work / f"comp-{c}", warmup) for c in ("eager", "compile")}
out["speedup"] = out["compile"]["tokens_per_s"] / out["eager"]["tokens_per_s"]
print(json.dumps({"check": "compile_cuda", "size": "small", "batch": "32x128", "precision": "bf16", **out}))
EOF
}
export -f compile_check
step compile_cuda 120 bash -c compile_check

step step_parts_cuda 60 $PY benchmarks/train_step_parts.py --device "$DEVICE" --precision bf16 --profile "${PARTS[@]}"

for name in precision_cuda inference_cuda compile_cuda step_parts_cuda; do
  [ -s "$OUT/$name.out" ] && tail -n 1 "$OUT/$name.out" >"$OUT/$name.json"
done
rm -rf "$WORK"
echo "== done in $((SECONDS - START))s; JSON in $OUT"
