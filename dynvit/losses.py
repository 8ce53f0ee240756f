"""The training objectives of the dynamic families, each built by its model
(``DynamicModel.training_objective``) from an ``ObjectiveConfig``.

Every objective is a ``DistilledLoss``: ``loss(logits, aux, target, teacher_logits=None,
teacher_tokens=None)`` returns the total and its detached parts by name; the trainer asks
``wants_teacher_tokens(aux)`` before running a teacher for its tokens.

DynamicViT (Rao et al., NeurIPS 2021, arXiv:2106.02034) trains with cross-entropy, a keep-ratio
loss per stage, KL distillation of the logits from the dense teacher and an MSE distillation
of the kept tokens; weights 1, 2, 0.5, 0.5 in the paper.

Evo-ViT (Xu et al., AAAI 2022, arXiv:2108.01390) trains two heads, one on the pooled patch
tokens and one on the class token, with half of the cross-entropy each; its released code has
logit distillation from a teacher as an option, off by default.

EViT (Liang et al., ICLR 2022, arXiv:2202.07800) trains with the plain classification loss while
its keep rate warms up from 1 (a sparsity schedule moves the model's knob); its released code
(DeiT's) has distillation from a teacher as an option, off by default.

FBS (Gao et al., ICLR 2019, arXiv:1810.05331) adds an L1 penalty on the gates' saliencies to
the task loss, so that few channels stay salient.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ObjectiveConfig', 'DistilledLoss', 'ClassificationLoss', 'DynamicViTLoss', 'EvoViTLoss',
           'FBSLoss', 'distillation_kl', 'ratio_loss', 'saliency_l1', 'token_distillation_loss']


@dataclass
class ObjectiveConfig:
    """The settings a family's training objective is built from.

    Attributes:
        label_smoothing: Cross-entropy label smoothing.
        distill_weight: Weight of the soft-target KL term (used when a teacher is given).
        distill_temperature: Its softening temperature T (the term is scaled by T^2).
        l1_weight: Weight of a sparsity penalty on the saliencies of channel gates (FBS).
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


def ratio_loss(decisions: Sequence[torch.Tensor], keep_ratios: Sequence[float]) -> torch.Tensor:
    """Mean over stages of the squared gap between each image's kept fraction and the target.

    Args:
        decisions: Per stage ``[B, N]`` keep decisions over the original patches.
        keep_ratios: Target fraction of the original patches per stage.

    Returns:
        Scalar ``mean_s mean_b (mean_n d[s][b, n] - keep_ratios[s])^2``.
    """
    if len(decisions) != len(keep_ratios):
        raise ValueError(f'{len(decisions)} decision stages but {len(keep_ratios)} keep ratios')
    terms = [((d.mean(dim=1) - r) ** 2).mean() for d, r in zip(decisions, keep_ratios)]
    return torch.stack(terms).mean()


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


def token_distillation_loss(
        student_tokens: torch.Tensor,
        teacher_tokens: torch.Tensor,
        keep: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between student and teacher tokens at the positions the student kept.

    Args:
        student_tokens: ``[B, N, C]`` final student patch tokens in original positions.
        teacher_tokens: ``[B, N, C]`` the dense teacher's final patch tokens.
        keep: ``[B, N]`` final keep decisions (> 0.5 = kept).

    Returns:
        Scalar MSE over kept tokens and channels (0 when nothing is kept).
    """
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(f'student tokens {tuple(student_tokens.shape)} and teacher tokens '
                         f'{tuple(teacher_tokens.shape)} differ in shape')
    mask = keep.detach() > 0.5
    if not bool(mask.any()):
        return student_tokens.sum() * 0.0
    return (student_tokens[mask] - teacher_tokens.detach()[mask]).pow(2).mean()


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
    """The objective of a family with nothing of its own to train (ToMe merges and EViT keeps by a
    rule; the keep rate is set, not learned):
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


class DynamicViTLoss(DistilledLoss):
    """The DynamicViT training objective.

    ``loss = ce + ratio_weight * ratio + distill_weight * kl + token_weight * token_mse``;
    the distillation terms are skipped when no teacher output is given.

    Args:
        keep_ratios: Target kept fraction of the original patches per stage; None (default):
            the ratios the forward ran with (``aux.keep_ratio``), so a sparsity schedule that
            moves the model's keep ratio moves the target with it.
        base_criterion: Classification loss (default cross-entropy; pass e.g. timm's
            ``SoftTargetCrossEntropy`` for mixup targets).
        ratio_weight: Weight of ``ratio_loss``.
        distill_weight: Weight of ``distillation_kl`` on the logits.
        token_weight: Weight of ``token_distillation_loss``.
        temperature: Softening temperature of the logit distillation.
    """

    def __init__(
            self,
            keep_ratios: Optional[Sequence[float]] = None,
            base_criterion: Optional[nn.Module] = None,
            ratio_weight: float = 2.0,
            distill_weight: float = 0.5,
            token_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        super().__init__(base_criterion, distill_weight, temperature)
        self.keep_ratios = None if keep_ratios is None else tuple(float(r) for r in keep_ratios)
        self.ratio_weight = ratio_weight
        self.token_weight = token_weight

    def wants_teacher_tokens(self, aux: Any) -> bool:
        """The tokens are compared in place, so only a masked (training-mode) pass uses them; at
        keep ratio 1.0 (the start of a schedule) the model trains dense, without token targets."""
        return self.token_weight > 0 and aux.execution == 'masked'

    def forward(
            self,
            logits: torch.Tensor,
            aux,
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
            teacher_tokens: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: Student logits ``[B, K]``.
            aux: The student's ``DynamicViTAux`` from a training-mode forward.
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Dense teacher logits ``[B, K]``.
            teacher_tokens: Dense teacher's final normalised tokens ``[B, L_t, C]``; its last
                N tokens are the patches.

        Returns:
            The total loss and its detached parts by name.
        """
        ratios = aux.keep_ratio if self.keep_ratios is None else self.keep_ratios
        parts = {'ce': self.base_criterion(logits, target), 'ratio': ratio_loss(aux.decisions, ratios)}
        total = parts['ce'] + self.ratio_weight * parts['ratio']
        if teacher_logits is not None:
            parts['kl'] = distillation_kl(logits, teacher_logits, self.temperature)
            total = total + self.distill_weight * parts['kl']
        if teacher_tokens is not None:
            if aux.execution != 'masked':
                raise ValueError('token distillation needs the training-mode (masked) forward, '
                                 'where tokens stay in their original positions')
            n = aux.num_patches
            parts['token'] = token_distillation_loss(aux.features[:, -n:], teacher_tokens[:, -n:], aux.decisions[-1])
            total = total + self.token_weight * parts['token']
        return total, {k: v.detach() for k, v in parts.items()}


class EvoViTLoss(DistilledLoss):
    """The Evo-ViT training objective.

    ``loss = (1 - cls_weight) * ce(logits) + cls_weight * ce(aux.cls_logits)
    + distill_weight * kl(logits, teacher_logits)``; the distillation term is skipped when no
    teacher output is given.

    Args:
        base_criterion: Classification loss (default cross-entropy).
        cls_weight: Share of the class-token head in the classification loss, in [0, 1]
            (0.5 in the paper; 0 for a model without ``aux_head``).
        distill_weight: Weight of ``distillation_kl`` on the main head's logits.
        temperature: Softening temperature of the distillation.
    """

    def __init__(
            self,
            base_criterion: Optional[nn.Module] = None,
            cls_weight: float = 0.5,
            distill_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        if not 0.0 <= cls_weight <= 1.0:
            raise ValueError(f'cls_weight must be in [0, 1], got {cls_weight}')
        super().__init__(base_criterion, distill_weight, temperature)
        self.cls_weight = cls_weight

    def forward(
            self,
            logits: torch.Tensor,
            aux,
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: The main head's logits ``[B, K]``.
            aux: The ``EvoViTAux`` of a training-mode forward (carries the class-token head's logits).
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Teacher logits ``[B, K]``.

        Returns:
            The total loss and its detached parts by name.
        """
        parts = {'ce': self.base_criterion(logits, target)}
        total = (1.0 - self.cls_weight) * parts['ce']
        if self.cls_weight > 0:
            if getattr(aux, 'cls_logits', None) is None:
                raise ValueError('the class-token head loss needs aux.cls_logits: run the model in training mode '
                                 'with return_aux=True (and aux_head=True), or set cls_weight=0')
            parts['ce_cls'] = self.base_criterion(aux.cls_logits, target)
            total = total + self.cls_weight * parts['ce_cls']
        return self._with_distillation(total, parts, logits, teacher_logits)


def saliency_l1(saliency: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Mean absolute saliency: per gate the batch mean of ``mean_c |s_c|``, averaged over the gates
    that were on (0 when none was).

    Args:
        saliency: Per gate ``[B, C]`` saliencies (``FBSAux.saliency``); None for gates that were off.
    """
    terms = [s.abs().mean() for s in saliency if s is not None]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


class FBSLoss(DistilledLoss):
    """The FBS training objective: ``ce(logits) + l1_weight * saliency_l1(aux.saliency)
    + distill_weight * kl(logits, teacher_logits)``.

    The paper sums the saliencies' absolute values; here they are averaged per channel and
    over the gates, so the weight does not depend on the network's width or depth.

    Args:
        base_criterion: Classification loss (default cross-entropy).
        l1_weight: Weight of the saliency L1 term.
        distill_weight: Weight of ``distillation_kl`` (used when teacher logits are given).
        temperature: Softening temperature of the distillation.
    """

    def __init__(
            self,
            base_criterion: Optional[nn.Module] = None,
            l1_weight: float = 1e-3,
            distill_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        if l1_weight < 0:
            raise ValueError(f'l1_weight must be >= 0, got {l1_weight}')
        super().__init__(base_criterion, distill_weight, temperature)
        self.l1_weight = l1_weight

    def forward(
            self,
            logits: torch.Tensor,
            aux,
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: ``[B, K]``.
            aux: The ``FBSAux`` of the forward (``return_aux=True``).
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Teacher logits ``[B, K]``.

        Returns:
            The total loss and its detached parts by name.
        """
        if not hasattr(aux, 'saliency'):
            raise ValueError('FBSLoss needs the FBSAux of the forward: call model(x, return_aux=True)')
        parts = {'ce': self.base_criterion(logits, target), 'l1': saliency_l1(aux.saliency).to(logits)}
        total = parts['ce'] + self.l1_weight * parts['l1']
        return self._with_distillation(total, parts, logits, teacher_logits)
