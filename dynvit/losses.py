"""What the training objectives of the dynamic families share. Each family's objective lives with
its model, which builds it (``DynamicModel.training_objective``) from an ``ObjectiveConfig``.

Every objective is a ``DistilledLoss``: ``loss(logits, aux, target, teacher_logits=None,
teacher_tokens=None)`` returns the total and its detached parts by name; the trainer asks
``wants_teacher_tokens(aux)`` before running a teacher for its tokens. ``ClassificationLoss`` is
the objective of a family with nothing of its own to train: cross-entropy and logit distillation
(Hinton et al., arXiv:1503.02531).
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ObjectiveConfig', 'DistilledLoss', 'ClassificationLoss', 'check_weight', 'distillation_kl']


@dataclass
class ObjectiveConfig:
    """The settings a family's training objective is built from.

    Attributes:
        label_smoothing: Cross-entropy label smoothing.
        distill_weight: Weight of the soft-target KL term (used when a teacher is given).
        distill_temperature: Its softening temperature T (the term is scaled by T^2).
        l1_weight: Weight of a sparsity penalty on the saliencies of channel gates.
    """
    label_smoothing: float = 0.0
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    l1_weight: float = 1e-3

    def criterion(self) -> nn.Module:
        """The classification loss."""
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def distillation(self) -> Dict[str, Any]:
        """``distill_weight`` and ``temperature`` keyword arguments of a ``DistilledLoss``."""
        return dict(distill_weight=self.distill_weight, temperature=self.distill_temperature)


def check_weight(name: str, value: float, low: float = 0.0, high: float = float('inf')) -> float:
    """``value`` of a loss weight ``name`` when it is in ``[low, high]``, else a ValueError naming it."""
    if not low <= value <= high:
        bound = f'>= {low:g}' if high == float('inf') else f'in [{low:g}, {high:g}]'
        raise ValueError(f'{name} must be {bound}, got {value}')
    return value


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softened class distributions, batch mean, times T^2 (Hinton et al.)."""
    t = float(temperature)
    if t <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.detach() / t, dim=-1),
        reduction='batchmean',
        log_target=True,
    )
    return kl * t * t


class DistilledLoss(nn.Module):
    """A family's objective: a classification loss plus optional KL distillation from teacher logits.

    Subclasses implement ``forward(logits, aux, target, teacher_logits=None, **teacher_targets)``
    and return ``self._with_distillation(total, parts, logits, teacher_logits)``.
    """

    def __init__(self, base_criterion: Optional[nn.Module], distill_weight: float, temperature: float) -> None:
        super().__init__()
        self.base_criterion = base_criterion if base_criterion is not None else nn.CrossEntropyLoss()
        self.distill_weight = distill_weight
        self.temperature = temperature

    def wants_teacher_tokens(self, aux: Any) -> bool:
        """Whether this pass's loss uses the teacher's output tokens (``teacher_tokens=``)."""
        return False

    def _with_distillation(self, total: torch.Tensor, parts: Dict[str, torch.Tensor], logits: torch.Tensor,
                           teacher_logits: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if teacher_logits is not None:
            parts['kl'] = distillation_kl(logits, teacher_logits, self.temperature)
            total = total + self.distill_weight * parts['kl']
        return total, {k: v.detach() for k, v in parts.items()}


class ClassificationLoss(DistilledLoss):
    """The objective of a family with nothing of its own to train (it selects by a rule; the keep
    rate is set, not learned):
    ``loss = ce + distill_weight * kl(logits, teacher_logits)``, the distillation term skipped
    when no teacher output is given."""

    def forward(
            self,
            logits: torch.Tensor,
            aux: Any,
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss and its detached parts by name (``aux`` is not read)."""
        parts = {'ce': self.base_criterion(logits, target)}
        return self._with_distillation(parts['ce'], parts, logits, teacher_logits)


