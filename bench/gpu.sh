#!/usr/bin/env bash
# GPU benchmarks of woundscore: bf16 embedding images/s + MFU, matmul peak, fine-tune step
# speed-up (plain vs frozen-prefix cache), decode supply. Installs nothing; random weights.
#
#   bash bench/gpu.sh            # on the GPU machine, from the repo root; < 8 minutes on H100/H200
#   bash bench/gpu.sh --smoke    # anywhere (CPU ok): tiny config, checks that every section runs
#
# Uses python3 (or $PYTHON) with whatever torch/transformers are installed; the repo's packages
# come from PYTHONPATH=. (no pip install needed). Each section is its own process under `timeout`,
# so one failure or hang does not stop the others. Results also go to $OUT/gpu_results.txt when
# $OUT is set. Exit 0 when every section ran, 1 when any failed or timed out.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
SMOKE=""
if [ "${1:-}" = "--smoke" ]; then SMOKE="--smoke"; fi
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; RES="$OUT/gpu_results.txt"; else RES="$(mktemp -t gpu_results.XXXXXX)"; fi
: > "$RES"
FAILED=0
START=$(date +%s)

say() { echo "$*"; echo "$*" >> "$RES"; }

# section NAME TIMEOUT_S CMD...
section() {
  local name=$1 limit=$2; shift 2
  say ""
  say "=== $name (limit ${limit}s, t=$(( $(date +%s) - START ))s) ==="
  timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v "^\[transformers\]" | tee -a "$RES"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say "--- $name: TIMED OUT after ${limit}s"; FAILED=1
  elif [ "$rc" -ne 0 ]; then say "--- $name: FAILED (exit $rc)"; FAILED=1
  else say "--- $name: ok"; fi
}

if [ -n "$SMOKE" ]; then T_ENV=60; T_MM=60; T_EMB=240; T_FT=300; T_SUP=120
else T_ENV=30; T_MM=45; T_EMB=170; T_FT=170; T_SUP=45; fi   # sum 460 s < 8 min

say "woundscore bench/gpu.sh ${SMOKE:-(full)} $(date -u '+%Y-%m-%d %H:%M UTC') host $(hostname)"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | while read -r l; do say "nvidia-smi: $l"; done
section env "$T_ENV" "$PY" bench/bench_gpu.py env
section "matmul peak" "$T_MM" "$PY" bench/bench_gpu.py matmul $SMOKE
section "embed bf16 (images/s, MFU)" "$T_EMB" "$PY" bench/bench_gpu.py embed $SMOKE --batches 32,64,128 --compile
if [ -n "$SMOKE" ]; then
  section "fine-tune step plain vs prefix" "$T_FT" "$PY" bench/bench_finetune_step.py --smoke --device cpu --batch 1 --steps 1 --warmup 1
else
  section "fine-tune step plain vs prefix (batch 4, bf16 autocast)" "$T_FT" "$PY" bench/bench_finetune_step.py --device cuda --dtype bfloat16 --batch 4 --steps 10 --warmup 3
fi
section "decode supply (CPU preprocessing vs GPU appetite)" "$T_SUP" "$PY" bench/bench_gpu.py supply $SMOKE

say ""
say "=== summary (t=$(( $(date +%s) - START ))s) ==="
grep -h "^RESULT\|^BENCH-SUMMARY\|TIMED OUT\|FAILED" "$RES" | cut -c1-400
say "results file: $RES"
exit $FAILED
