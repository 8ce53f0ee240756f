#!/usr/bin/env bash
# The GPU run in one command (under 8 minutes on one H200): CUDA correctness checks and dense vs
# sparse throughput (eager, CUDA graphs, compiled; fp32 and bf16; batch 1, 64, 256), written to
# benchmarks/results/gpu.json. Uses the Python environment it finds (.venv if present); needs
# torch with CUDA and dynvit importable. Without CUDA it says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 470 python benchmarks/bench_gpu.py --out benchmarks/results/gpu.json "$@"
