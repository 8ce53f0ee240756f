"""Training pieces: losses (the fine-tuning loop comes with the trainer)."""
from .losses import DynamicViTLoss, EvoViTLoss, distillation_kl, ratio_loss, token_distillation_loss
