#!/usr/bin/env bash
# Static compression on top of the zoo's Fashion-MNIST models (issue 9), step by step; each step
# resumes if interrupted (re-run the script). Needs the shipped weights (weights/) and the Debian
# package dataset-fashion-mnist. Then `python benchmarks/bench_compress.py` measures the table.
#   bash benchmarks/compress_fashion_mnist.sh [RUN_DIR]      (default runs/compress)
set -euo pipefail
RUN=${1:-runs/compress}
mkdir -p "$RUN"
source "$(dirname "$0")/common.sh"  # step NAME ARGS...: one resumable dynvit finetune run
FM=(--data fashion-mnist --mean 0.286 --std 0.353 --val-fraction 0.1 --seed 0 --threads 2)
TUNE=(--batch-size 128 --weight-decay 0.05 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter)
DENSE=dynamicvit_pico_patch4_28.fmnist_dense
KR05=dynamicvit_pico_patch4_28.fmnist_kr05

# 1-2. structured pruning: a third of the attention heads (3 -> 2 per block) and half of the MLP
#      hidden units (384 -> 192) cut out of the dense ViT and of DynamicViT 0.5, then two epochs of
#      fine-tuning distilled from the dense ViT
[ -f "$RUN/vit_dense_struct.safetensors" ] || dynvit compress "$DENSE" --heads 0.34 --mlp 0.5 --out "$RUN/vit_dense_struct.safetensors"
[ -f "$RUN/vit_kr05_struct.safetensors" ] || dynvit compress "$KR05" --heads 0.34 --mlp 0.5 --out "$RUN/vit_kr05_struct.safetensors"
EPOCHS=2 step vit_dense_struct "$RUN/vit_dense_struct.safetensors" "${FM[@]}" "${TUNE[@]}" --teacher "$DENSE" \
  --epochs 2 --lr 5e-4 --warmup-epochs 0.2
EPOCHS=2 step vit_kr05_struct "$RUN/vit_kr05_struct.safetensors" "${FM[@]}" "${TUNE[@]}" --teacher "$DENSE" \
  --epochs 2 --lr 5e-4 --sparse-lr 5e-4 --warmup-epochs 0.2

# 3-4. AutoPrune vs magnitude pruning at equal sparsity: AutoPrune one epoch on the dense ViT's block
#      weights; then magnitude pruning to the sparsity AutoPrune reached, one epoch of fine-tuning
EPOCHS=1 step vit_autoprune "$DENSE" "${FM[@]}" "${TUNE[@]}" --autoprune 5 --autoprune-lr 2e-2 \
  --epochs 1 --lr 3e-4 --warmup-epochs 0.1
SPARSITY=$(python -c "import json; print(round([json.loads(l) for l in open('$RUN/vit_autoprune/log.jsonl')][-1]['weight_sparsity'], 4))")
echo "AutoPrune reached weight sparsity $SPARSITY; magnitude pruning to the same"
EPOCHS=1 step vit_magnitude "$DENSE" "${FM[@]}" "${TUNE[@]}" --prune-weights "$SPARSITY" \
  --epochs 1 --lr 3e-4 --warmup-epochs 0.1
