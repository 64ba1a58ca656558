#!/usr/bin/env bash
# GPU acceptance (issue 30), in one device call of under 8 minutes: the CUDA-only tests, ms per
# evaluation at 512² against the floor, each feature's captured step path (summary.json), the
# batched sweep at 256², the pyramid at 1024. Files in $OUT: gpu_acceptance.json,
# RESULTS-section.md (for benchmarks/RESULTS.md), pytest.log, nvidia-smi.csv.
# Usage (repository root; missing packages: /work/shared/gpu-wheels/README.md):
#   bash benchmarks/gpu_run.sh             # on the GPU
#   bash benchmarks/gpu_run.sh --dry-run   # anywhere: CPU, tiny sizes, the same code paths
set -u
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/stylelab-gpu}
mkdir -p "$OUT"
if [[ " $* " != *" --dry-run "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv | tee "$OUT/nvidia-smi.csv" || echo "nvidia-smi failed: no GPU here?"
fi
timeout "${ACCEPTANCE_TIMEOUT:-470}" "$PYTHON" -m benchmarks.gpu_acceptance --out "$OUT" "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_run.sh: stopped after ${ACCEPTANCE_TIMEOUT:-470} s; partial results in $OUT"
exit $rc
