"""Training pieces: losses (the fine-tuning loop comes with the trainer)."""
from .losses import (
    DynamicViTLoss,
    EvoViTLoss,
    FBSLoss,
    distillation_kl,
    ratio_loss,
    saliency_l1,
    token_distillation_loss,
)
