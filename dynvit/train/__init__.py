"""Training: the methods' losses, the fine-tuning loop and its checkpoints."""
from .losses import (
    DynamicViTLoss,
    EvoViTLoss,
    FBSLoss,
    distillation_kl,
    ratio_loss,
    saliency_l1,
    token_distillation_loss,
)
from .checkpoint import load_training_state, save_training_state
from .teacher import ExternalTeacher
from .trainer import EpochBatchSampler, TrainConfig, Trainer, evaluate
