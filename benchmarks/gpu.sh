#!/usr/bin/env bash
# The GPU run in one command, under 6 minutes on one H200: CUDA correctness checks, a profile of
# where the device time goes, then every family against timm's dense model (DeiT-S, DeiT-B,
# ResNet-18) eager, as CUDA graphs, compiled and compiled + CUDA graphs; bf16 and fp32; batch 1,
# 64 and 256; into benchmarks/results/gpu.json (rewritten after every cell, failures with their
# tracebacks), then the table. Cells beyond the time budget are recorded as skipped. Uses the
# Python it finds (.venv if present); needs torch with CUDA, timm and this checkout (PYTHONPATH).
# Without CUDA it says so in one line and exits 0. More arguments go to bench_gpu.py
# (e.g. --widths small --dtypes bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 355 python benchmarks/bench_gpu.py --budget 300 --out benchmarks/results/gpu.json "$@"
