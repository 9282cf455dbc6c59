#!/usr/bin/env bash
# GPU check of the paper preset as configured (presets/paper.yaml), from a fresh checkout, under 8 minutes on one
# H100 (after the install). Each part runs in its own process under `timeout` and appends its JSON lines to
# benchmarks/results.jsonl the moment each figure is measured (benchmarks/gpu.py says what each line holds):
#   gpu_render_paper_preset     s/frame at 640x512: PNDM 100, s_I 8 / s_p 3 (3 branches stacked), fp16, frames
#                               batched vs the official recipe's one-frame fp32 loop, paired, median of ratios
#   gpu_train_paper_preset      one optimizer step of train_base (batch 4 x accum 4, fp16, gradient checkpointing):
#                               seconds and peak CUDA memory
#   gpu_train_no_checkpointing  the same step without checkpointing, beside it
#   gpu_rehearsal               pytest tests/rehearsal with DREAMPOSE_DEVICE=cuda, in whatever time is left
# A part that runs out of time gets a line {"name": ..., "ours": {"status": "timed out"}}; the lines written
# before it stay. Exit status: 0 when every part finished, 1 otherwise.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--out FILE]
#   --dry-run  every part on the CPU with tiny stand-ins (checks the script; measures nothing about a GPU)
# Environment: PYTHON (an interpreter with the project installed; default .venv/bin/python, installed when
#   missing), GPU_CHECK_TOTAL_S (450), GPU_CHECK_RENDER_S (230), GPU_CHECK_TRAIN_S (150): seconds per part.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="benchmarks/results.jsonl"
DRY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run); shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --out FILE)" >&2; exit 2 ;;
  esac
done
NEEDS="gpu_check: needs Python 3.11/3.12 and: python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[dev]' (torch 2.14.1 CUDA 13 wheels: NVIDIA driver >= 580)"

# 1. An interpreter with the project installed (the `make install` step; the dev extras bring pytest).
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import dreampose, diffusers, torch" 2>/dev/null; then
  PY=.venv/bin/python
else
  LOG="$(mktemp -t gpu_check_install.XXXXXX)"
  echo "gpu_check: installing into .venv (log: $LOG)" >&2
  if ! { python3 -m venv .venv && .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'; } >"$LOG" 2>&1; then
    echo "$NEEDS; the install failed (log: $LOG)" >&2
    exit 1
  fi
  PY=.venv/bin/python
fi
"$PY" -c "import dreampose, diffusers, torch" 2>/dev/null || { echo "$NEEDS" >&2; exit 1; }

# 2. A CUDA device (one line and exit 1 without one), unless this is the CPU dry run. The clock starts here.
TOTAL="${GPU_CHECK_TOTAL_S:-450}"
START=$SECONDS
if [ ${#DRY[@]} -eq 0 ]; then
  "$PY" -m benchmarks.gpu --part check || exit 1
fi

# 3. The parts, each under its own timeout (plus at most 15 s to be killed), inside the total budget.
FAILED=0
left() { echo $((TOTAL - (SECONDS - START))); }
missing() {  # status, seconds, line names: a line for each name not appended since line $BEFORE
  local status="$1" secs="$2" name
  shift 2
  for name in "$@"; do
    if ! tail -n +$((BEFORE + 1)) "$OUT" 2>/dev/null | grep -q "\"name\": \"$name\""; then
      printf '{"name": "%s", "config": {"preset": "presets/paper.yaml"}, "baseline": {}, "ours": {"status": "%s", "seconds": %s}, "ratio": null, "measured_at": "%s"}\n' \
        "$name" "$status" "$secs" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OUT"
    fi
  done
}
run_part() {  # part, seconds wanted, names of the lines it writes
  local part="$1" secs="$2" rc
  shift 2
  [ "$(left)" -lt "$secs" ] && secs="$(left)"
  BEFORE=0
  [ -f "$OUT" ] && BEFORE=$(wc -l <"$OUT")
  if [ "$secs" -lt 1 ]; then
    missing "skipped: no time left" 0 "$@"
    echo "gpu_check: no time left for $part" >&2
    FAILED=1
    return
  fi
  local t0=$SECONDS
  timeout --kill-after=15 "$secs" "$PY" -m benchmarks.gpu --part "$part" --out "$OUT" --budget-s $((secs * 3 / 4)) "${DRY[@]}"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    missing "timed out" "$secs" "$@"
    echo "gpu_check: $part timed out after $secs s" >&2
    FAILED=1
  elif [ $rc -ne 0 ]; then
    missing "failed (exit $rc)" "$((SECONDS - t0))" "$@"
    echo "gpu_check: $part failed (exit $rc)" >&2
    FAILED=1
  fi
}
run_part render "${GPU_CHECK_RENDER_S:-230}" gpu_render_paper_preset
run_part train "${GPU_CHECK_TRAIN_S:-150}" gpu_train_paper_preset gpu_train_no_checkpointing
if [ ${#DRY[@]} -eq 0 ]; then
  run_part rehearsal "$(left)" gpu_rehearsal
fi
exit $FAILED
