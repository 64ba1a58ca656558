#!/usr/bin/env bash
# One device call: the GPU tests (CUDA graph vs eager), then the full benchmark; files in $OUT.
# Usage (repository root, wheels installed, PYTHONPATH set): bash benchmarks/gpu_run.sh [bench args]
set -u
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
OUT=${OUT:-/tmp/stylelab-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$OUT/nvidia-smi.csv"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_optim.py \
  >"$OUT/pytest.log" 2>&1
echo "pytest rc=$?"
tail -15 "$OUT/pytest.log"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/bench.py --device cuda --out "$OUT/bench.json" \
  "$@" >"$OUT/bench-stdout.json" 2>"$OUT/bench.err"
echo "bench rc=$?"
grep -v "RANDOM VGG\|content .*style .*device\|W&B is offline" "$OUT/bench.err" | tail -30
python3 benchmarks/summary.py "$OUT/bench.json"
timeout "${SWEEP_TIMEOUT:-300}" python3 -m benchmarks.sweep --device cuda --size 256 --steps 300 \
  --logger none >"$OUT/sweep.txt" 2>&1
echo "sweep rc=$?"
tail -6 "$OUT/sweep.txt"
cp benchmarks/results/cuda-sweep-256-none.json "$OUT/" 2>/dev/null
