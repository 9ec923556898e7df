#!/usr/bin/env bash
# The GPU row of issue #13's speed bar: every generation strategy against left-to-right sampling with the
# key/value cache, 8 prompts x 64 and 256 new tokens (benchmarks/generate_speed.py --device cuda), JSON and
# the table into $OUT. With MODEL=DIR (a hybrid trained beforehand, e.g. the CPU run's cache carried to the
# machine) it times only: about 2 minutes on an H200. Without it, it first trains the GPT-BERT hybrid
# (mntp=3,clm=1) on the GPU for TRAIN_MINUTES (default 1.5) into $OUT/hybrid.
#
#   OUT=/tmp/gen MODEL=runs/gencache/final bash benchmarks/gpu_check_generate.sh
#
# SMOKE=1 runs generate_speed --quick on the CPU: it checks this script, not the GPU (tests/test_gpu_scripts.py
# runs it so).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_generate}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-$(command -v python || command -v python3)}
if [ "${SMOKE:-0}" = 1 ]; then ARGS=(--quick --device cpu); else ARGS=(--device cuda); fi
if [ -n "${MODEL:-}" ]; then
  ARGS+=(--model "$MODEL")
else
  ARGS+=(--train-minutes "${TRAIN_MINUTES:-1.5}" --cache "$OUT/hybrid")
fi
timeout "${LIMIT_S:-420}" "$PY" benchmarks/generate_speed.py "${ARGS[@]}" --out "$OUT/generate_speed.json" \
  >"$OUT/generate_speed.log" 2>&1
echo "generate_speed rc=$?"
grep '^|' "$OUT/generate_speed.log" || tail -n 5 "$OUT/generate_speed.log"
# the measured cost of a speculative round in one-token steps (what DraftSizer.COSTS["cuda"] should hold), and
# how often the masked drafts equal the causal greedy tokens, how many sampled drafts a round keeps, and how
# sure each reading is of its best token over a block
grep -E '^(round cost|masked draft|of 4 drafts|top probability|issue #13 bar)' "$OUT/generate_speed.log" || true
