"""Training: the fine-tuning loop and its checkpoints, and the objectives' shared parts (each family's
objective lives with its model; ``dynvit.train.<Loss>`` finds it there too)."""
from typing import Any

from ..losses import ClassificationLoss, DistilledLoss, ObjectiveConfig, distillation_kl
from .checkpoint import load_training_state, read_training_progress, save_training_state
from .teacher import ExternalTeacher
from .trainer import WARMUP_CAP, EpochBatchSampler, SettingsChanged, TrainConfig, Trainer, evaluate


def __getattr__(name: str) -> Any:
    from .. import models
    return getattr(models, name)
