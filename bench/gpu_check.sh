#!/usr/bin/env bash
# GPU check of the decoders on a CUDA machine, bounded at 8 minutes: NLL agreement CPU vs CUDA, training
# throughput fp32 eager vs bf16 + channels_last + torch.compile (images/s, peak memory, FLOPs, MFU), and
# cached vs naive sampling at batch 256, for the paper decoder (3x32x32, 5x160x10). See decoders/tools/gpu_check.py.
# Run from anywhere: bench/gpu_check.sh [--train-batch 64] [--naive-rows 8] [--no-compile] ...
# On a machine without a GPU, `bench/gpu_check.sh --device cpu --smoke` checks the script in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 python -m decoders.tools.gpu_check "$@"
