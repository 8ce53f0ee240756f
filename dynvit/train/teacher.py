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

from ..models._helpers import model_input_size

__all__ = ['ExternalTeacher']


def _per_channel(values: Sequence[float], channels: int, what: str) -> torch.Tensor:
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f'{what} has {len(values)} values for {channels} channels')
    return torch.tensor(values).view(1, channels, 1, 1)


class ExternalTeacher(nn.Module):
    """A frozen classifier that reads batches prepared for the student.

    Args:
        model: The teacher (any timm-style classifier; its pretrained cfg gives its input size,
            mean and std).
        student_mean: Normalisation mean of the student's batches (one value or one per channel).
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
        self.size: Tuple[int, int] = (h, w)
        self.mode = cfg.get('interpolation') if cfg.get('interpolation') in ('bilinear', 'bicubic', 'nearest') else 'bicubic'
        self.student_chans, self.teacher_chans = student_chans, chans
        if student_chans != chans and 1 not in (student_chans, chans):
            raise ValueError(f'the teacher takes {chans} channels, the student {student_chans}; only 1 <-> N '
                             f'conversions (gray to colour or back) are supported')
        self.register_buffer('s_mean', _per_channel(student_mean, student_chans, 'the student mean'), persistent=False)
        self.register_buffer('s_std', _per_channel(student_std, student_chans, 'the student std'), persistent=False)
        self.register_buffer('t_mean', _per_channel(cfg['mean'], chans, 'the teacher mean'), persistent=False)
        self.register_buffer('t_std', _per_channel(cfg['std'], chans, 'the teacher std'), persistent=False)

    def train(self, mode: bool = True) -> 'ExternalTeacher':
        super().train(False)  # always frozen, BatchNorm statistics included
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[B, num_classes]`` for student images ``x`` ``[B, C, H, W]``."""
        x = x.float() * self.s_std + self.s_mean  # pixel values in [0, 1]
        if self.student_chans != self.teacher_chans:
            x = x.mean(1, keepdim=True) if self.teacher_chans == 1 else x.expand(-1, self.teacher_chans, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = F.interpolate(x, size=self.size, mode=self.mode, align_corners=None if self.mode == 'nearest' else False,
                              antialias=shrink and self.mode != 'nearest').clamp_(0, 1)
        return self.model((x - self.t_mean) / self.t_std)
