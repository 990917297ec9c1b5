#!/usr/bin/env bash
# One-shot GPU validation: every GPU check of the project in one run (at most 9 minutes by default:
# each step has a cap, the caps add up to the budget), written up as one markdown report. Run from
# anywhere, in the environment the project is installed in (`pip install -e ".[dev]"`: torch with
# CUDA and Triton; TensorRT used when present):
#
#   benchmarks/gpu_check.sh                        # report: benchmarks/results/gpu_check-<gpu>-<time>.md
#   benchmarks/gpu_check.sh --out report.md        # elsewhere
#   benchmarks/gpu_check.sh --slow                 # also the engine build matrix (25 minutes)
#   PYTHON=/path/to/python benchmarks/gpu_check.sh # another interpreter
#
# Steps (benchmarks/gpu_check.py): environment (with the C compiler and Python headers Triton's
# JIT launcher needs); the kernel's numerics at every tile and dtype; compute-sanitizer memcheck
# on a small case (when installed); the quick `gpu` and `tensorrt` tests; benchmarks/dcn_gpu.py;
# whole-model latency of ATSS R-50 at 800x1333; the default model's fp32 and fp16 TensorRT engines
# (AP on its validation split, latency). Each step runs in its own process group, killed whole at
# its cap. What cannot run here is reported as skipped, with why. Exit status 1 when a step failed
# or timed out.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
