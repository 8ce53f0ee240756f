"""A distillation teacher of another architecture, fed the student's batches.

DeiT (Touvron et al. 2021, arXiv:2012.12877) showed that a ViT learns faster and further from a
convolutional teacher. The teacher usually wants other inputs than the student (another size,
channel count or normalisation), so ``ExternalTeacher`` undoes the student's normalisation,
converts channels, resizes (with the teacher's interpolation, antialiased when shrinking) and applies the teacher's own
normalisation before its frozen forward. Only its logits are used (its tokens, if any, do not
line up with the student's).
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import resolve_data_config

from ..data.transforms import model_norm
from ..models import model_input_size

__all__ = ['ExternalTeacher']


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    """``[1, C, 1, 1]`` from one value per channel, or averaged / repeated as the transforms do."""
    values = [float(v) for v in values]
    if len(values) != channels:
        values = [sum(values) / len(values)] * channels
    return torch.tensor(values).view(1, channels, 1, 1)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL converts RGB to 'L'


class ExternalTeacher(nn.Module):
    """A frozen classifier that reads batches prepared for the student.

    Args:
        model: The teacher (any timm-style classifier; its pretrained cfg gives its input size,
            mean and std).
        student_mean: Normalisation mean of the student's batches (one per channel; another count
            is averaged, as the transforms do).
        student_std: Normalisation std of the student's batches.
        student_chans: Channels of the student's batches.
    """

    def __init__(self, model: nn.Module, student_mean: Sequence[float], student_std: Sequence[float],
                 student_chans: int) -> None:
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        cfg = resolve_data_config({}, model=model)
        chans, h, w = model_input_size(model)
        t_mean, t_std = model_norm(model)
        self.size: Tuple[int, int] = (h, w)
        interpolation = cfg.get('interpolation')
        self.mode = interpolation if interpolation in ('bilinear', 'bicubic', 'nearest') else 'bicubic'
        self.student_chans, self.teacher_chans = student_chans, chans
        if student_chans != chans and 1 not in (student_chans, chans):
            raise ValueError(f'the teacher takes {chans} channels, the student {student_chans}; only 1 <-> N '
                             f'conversions (gray to colour or back) are supported')
        self.register_buffer('s_mean', _per_channel(student_mean, student_chans), persistent=False)
        self.register_buffer('s_std', _per_channel(student_std, student_chans), persistent=False)
        self.register_buffer('t_mean', _per_channel(t_mean, chans), persistent=False)
        self.register_buffer('t_std', _per_channel(t_std, chans), persistent=False)

    def train(self, mode: bool = True) -> 'ExternalTeacher':
        super().train(False)  # always frozen, BatchNorm statistics included
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[B, num_classes]`` for student images ``x`` ``[B, C, H, W]``."""
        x = x.float() * self.s_std + self.s_mean  # pixel values in [0, 1]
        if self.student_chans != self.teacher_chans:
            if self.teacher_chans == 1:  # to gray as PIL does (the teacher was trained on such images)
                weights = _LUMA if self.student_chans == 3 else [1 / self.student_chans] * self.student_chans
                luma = torch.tensor(weights, device=x.device)
                x = (x * luma.view(1, -1, 1, 1)).sum(1, keepdim=True)
            else:
                x = x.expand(-1, self.teacher_chans, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(x, size=self.size, mode=self.mode, align_corners=None if self.mode == 'nearest' else False,
                              antialias=shrink and self.mode != 'nearest').clamp_(0, 1)
        return self.model((x - self.t_mean) / self.t_std)
