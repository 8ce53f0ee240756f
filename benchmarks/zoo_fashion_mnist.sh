#!/usr/bin/env bash
# The zoo's Fashion-MNIST models (issue 6), step by step; each step resumes if interrupted
# (re-run the script). Needs the Debian package dataset-fashion-mnist. Usage:
#   bash benchmarks/zoo_fashion_mnist.sh [RUN_DIR]      (default runs/zoo)
set -euo pipefail
RUN=${1:-runs/zoo}
FM=(--data fashion-mnist --mean 0.286 --std 0.353 --val-fraction 0.1 --seed 0 --threads 2)
step() {  # step NAME ARGS...: run `dynvit finetune ... --out RUN/NAME`, resuming a started run
  local out="$RUN/$1"; shift
  if [ -f "$out/train_state.safetensors" ]; then
    python -c "import json,sys; h=[json.loads(l) for l in open('$out/log.jsonl')]; sys.exit(0 if h and h[-1]['epoch'] >= $EPOCHS else 1)" 2>/dev/null \
      && { echo "$out: done"; return; }
    dynvit finetune "$@" --out "$out" --resume
  else
    dynvit finetune "$@" --out "$out"
  fi
}
# 1. dense ResNet-18 at half width (32-64-128-256) on 64-px upscaled images
EPOCHS=15 step resnet18_dense fbs_resnet18 "${FM[@]}" --img-size 64 --density 1.0 \
  --model-args '{"in_chans": 1, "channels": [32, 64, 128, 256], "stem_width": 32}' \
  --epochs 15 --batch-size 128 --lr 2e-3 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 \
  --aug-scale 0.8 --no-color-jitter --no-distill
# 2. FBS ResNet-18 at density 0.5 from it: one epoch training only the gates, then joint, with
#    distillation from the dense model
EPOCHS=8 step resnet18_fbs50 fbs_resnet18 "${FM[@]}" --img-size 64 --density 0.5 \
  --checkpoint "$RUN/resnet18_dense/best.safetensors" \
  --epochs 8 --batch-size 128 --lr 1e-3 --sparse-lr 5e-3 --weight-decay 0.05 --warmup-epochs 0.5 \
  --gate-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter
# ship: weights/<arch>.<tag>.safetensors + card
python benchmarks/zoo_ship.py "$RUN/resnet18_dense/best.safetensors" --tag fmnist_dense \
  --command "bash benchmarks/zoo_fashion_mnist.sh (step resnet18_dense)"
python benchmarks/zoo_ship.py "$RUN/resnet18_fbs50/best.safetensors" --tag fmnist_d50 \
  --dense fbs_resnet18.fmnist_dense --command "bash benchmarks/zoo_fashion_mnist.sh (step resnet18_fbs50)"
