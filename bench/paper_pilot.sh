#!/usr/bin/env bash
# A pilot of the paper-scale run on a GPU: fits the cinic10-paper decoder to convergence on known-answer 3x32x32
# images (truth / estimate / CI / ok, time per epoch and per job), writes the speeds of the preset's decoders to
# DIR/bench.json, then prints the full run's GPU-hours with `ibprobe plan --preset cinic10-paper --bench`.
# See ibprobe/tools/pilot.py. Run from anywhere: bench/paper_pilot.sh [--out DIR] [--device cuda:0] [--seed S]
# On a machine without a GPU, `bench/paper_pilot.sh --smoke` runs the same path on the CPU in seconds (a tiny
# decoder, and digits-quick's plan instead of cinic10-paper's); the test suite runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/paper_pilot
plan_preset=cinic10-paper
args=()
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --smoke) plan_preset=digits-quick; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
rc=0
timeout 1800 python -m ibprobe pilot --out "$out" "${args[@]}" || rc=$?
if ((rc > 1)); then exit "$rc"; fi   # 1: a case missed or a decoder did not converge; the speeds still stand
echo
echo "the full run of $plan_preset at these speeds (worker-h = GPU-hours with one GPU per worker):"
python -m ibprobe plan --preset "$plan_preset" --bench "$out/bench.json" --workers 8 --quiet
exit "$rc"
