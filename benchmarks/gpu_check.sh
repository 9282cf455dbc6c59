#!/usr/bin/env bash
# GPU check (CUDA machine, under 8 minutes): appends JSON lines to benchmarks/results.jsonl with the device name:
#   render_gpu_paper_vs_ours    s/frame at 640x512, SD v1.x-shaped random weights: paper recipe (PNDM 100,
#                               3 branches, fp32) vs ours (demo recipe, fp16), paired, median of ratios
#   train_step_gpu_peak_memory  one training step at 640x512, batch 1, fp16, with/without gradient checkpointing
#   rehearsal_gpu               pytest tests/rehearsal -q with DREAMPOSE_DEVICE=cuda (runtime.device of every
#                               params file the rehearsal reads)
# Usage: benchmarks/gpu_check.sh [--dry-run] [--out FILE]
#   --dry-run  tiny sizes on the CPU (checks the code; no CUDA needed, nothing about the GPU is measured)
# Without CUDA (and without --dry-run) it exits 1 with one line on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
OUT="benchmarks/results.jsonl"
DRY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run); shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out FILE)" >&2; exit 2 ;;
  esac
done
if [ ${#DRY[@]} -eq 0 ]; then
  exec timeout 470 "$PY" -m benchmarks.gpu --require-cuda --rehearsal --out "$OUT"
fi
exec "$PY" -m benchmarks.gpu --dry-run --out "$OUT"
