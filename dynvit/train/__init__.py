"""Training: the fine-tuning loop and its checkpoints (the families' losses are in ``dynvit.losses``,
re-exported here)."""
from ..losses import (
    ClassificationLoss,
    DistilledLoss,
    DynamicViTLoss,
    EvoViTLoss,
    FBSLoss,
    ObjectiveConfig,
    distillation_kl,
    ratio_loss,
    saliency_l1,
    token_distillation_loss,
)
from .checkpoint import load_training_state, save_training_state
from .teacher import ExternalTeacher
from .trainer import EpochBatchSampler, TrainConfig, Trainer, evaluate
