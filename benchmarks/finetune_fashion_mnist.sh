#!/usr/bin/env bash
# Fashion-MNIST on the CPU: a dense ViT first (DynamicViT at keep ratio 1.0 trains the dense model),
# then DynamicViT at keep ratio 0.7 fine-tuned from it with the paper's losses (the dense model is
# the teacher). Needs the Debian package dataset-fashion-mnist. Usage:
#   bash benchmarks/finetune_fashion_mnist.sh [RUN_DIR]      (default runs/fashion_mnist)
# Writes RUN_DIR/{dense,dynamicvit}/{log.jsonl,best.safetensors,train_state.safetensors}.
set -euo pipefail
RUN=${1:-runs/fashion_mnist}
MODEL=dynamicvit_tiny_patch16_224
ARGS='{"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 96, "depth": 6, "num_heads": 3, "prune_loc": [2, 4]}'
DATA=(--data fashion-mnist --model-args "$ARGS" --mean 0.286 --std 0.353 --batch-size 128 --aug-scale 0.8
      --no-color-jitter --threads 2)
dynvit finetune "$MODEL" "${DATA[@]}" --keep-ratio 1.0 --epochs 3 --lr 1e-3 --warmup-epochs 0.3 --no-distill \
  --out "$RUN/dense"
dynvit finetune "$MODEL" "${DATA[@]}" --checkpoint "$RUN/dense/best.safetensors" --keep-ratio 0.7 --epochs 2 \
  --lr 5e-4 --sparse-lr 1e-3 --warmup-epochs 0.2 --sparsity-warmup-epochs 1 --out "$RUN/dynamicvit"
dynvit eval "$RUN/dynamicvit/best.safetensors" --data fashion-mnist --threads 2
