"""FBS channel gates and the convolution pieces that skip suppressed channels.

Paper: Dynamic Channel Pruning: Feature Boosting and Suppression (Gao, Zhao, Dudziak,
Mullins, Xu; ICLR 2019), arXiv:1810.05331.

A gate predicts a saliency per output channel of a convolution from its globally pooled
input, ``s = ReLU(W · GAP(x) + b)``. Winner-take-all keeps the ``ceil(d · C)`` most salient
channels (density ``d``); kept channels are multiplied by their saliency ("boost"), the rest
are zero. Because they are zero they need not be computed, and the next convolution need
not read them.

Two ways to run a gated convolution here:

* masked (training): the dense convolution, then ``* pi`` with ``pi = s`` on kept channels
  and 0 elsewhere (the saliency of kept channels gets gradients);
* skipped (inference): the *batch-grouped layout*. Image ``b`` keeps channels ``idx[b]``;
  its activations are stored as ``[1, B * k, H, W]`` (image-major), the weight rows and
  columns it needs are gathered into ``[B * k_out, k_in, kh, kw]`` and a single
  convolution with ``groups = B`` computes every image's kept channels from its kept
  inputs. At batch 1 this is just a convolution with the sliced weight.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame, conv2d_same

__all__ = [
    'ChannelGate', 'num_kept', 'select_channels', 'masked_saliency', 'check_sliceable_conv', 'check_batch_norm',
    'is_positively_homogeneous',
    'bn_affine', 'sliced_conv', 'sliced_affine', 'scatter_pooled',
]


class ChannelGate(nn.Module):
    """Saliency of a convolution's output channels from its pooled input.

    The bias starts at 1 and the weights near 0, so a fresh gate boosts by about 1: a
    pretrained dense network keeps its scale when gates are added.

    Args:
        in_channels: Channels of the gated convolution's input.
        out_channels: Channels of the gated convolution's output (the gated channels).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.ones_(self.fc.bias)

    @property
    def in_channels(self) -> int:
        return self.fc.in_features

    @property
    def out_channels(self) -> int:
        return self.fc.out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, C_in]`` pooled input -> ``[B, C_out]`` saliency (>= 0)."""
        return F.relu(self.fc(pooled))


def num_kept(density: float, channels: int) -> int:
    """Channels a gate keeps: ``ceil(density * channels)``, at least 1 (float error forgiven)."""
    return max(1, min(channels, math.ceil(density * channels - 1e-6)))


def select_channels(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """Winner-take-all: the ``k`` most salient channels of each image, ascending ``[B, k]`` int64."""
    idx = saliency.detach().topk(k, dim=1, sorted=False).indices
    return idx.sort(dim=1).values


def masked_saliency(saliency: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``pi``: the saliency on the channels in ``idx`` ``[B, k]``, 0 elsewhere (differentiable in ``saliency``)."""
    return torch.zeros_like(saliency).scatter(1, idx, saliency.gather(1, idx))


def scatter_pooled(pooled: torch.Tensor, idx: torch.Tensor, channels: int) -> torch.Tensor:
    """Puts ``[B, k]`` pooled values of the kept channels ``idx`` into a ``[B, channels]`` zero tensor."""
    return pooled.new_zeros(pooled.shape[0], channels).scatter_(1, idx, pooled)


def check_sliceable_conv(conv: nn.Module, where: str) -> None:
    """Raises a ValueError unless ``conv`` is a plain (or TF-'same' padded) Conv2d whose channels
    can be sliced: dense or depthwise, zero padding."""
    if type(conv) not in (nn.Conv2d, Conv2dSame):
        raise ValueError(f'{where}: FBS slices the weights of nn.Conv2d layers, got {type(conv).__name__}')
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if conv.groups != 1 and not depthwise:
        raise ValueError(f'{where}: grouped convolutions (groups={conv.groups}) are not supported, only dense or '
                         f'depthwise ones')
    if conv.padding_mode != 'zeros':
        raise ValueError(f'{where}: padding_mode={conv.padding_mode!r} is not supported')
    if conv.bias is not None:
        raise ValueError(f'{where}: convolutions with a bias are not supported (FBS folds the following '
                         f'BatchNorm into the sliced weights)')


def check_batch_norm(bn: nn.Module, where: str) -> None:
    """Raises a ValueError unless ``bn`` is a BatchNorm2d (timm ``BatchNormAct2d`` included) with
    running statistics, which the skipping inference folds into the sliced convolution."""
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
        raise ValueError(f'{where}: FBS needs BatchNorm2d with running statistics after a gated convolution, '
                         f'got {type(bn).__name__}')


def is_positively_homogeneous(act: nn.Module) -> bool:
    """Whether ``act(s * x) == s * act(x)`` for ``s >= 0`` (ReLU, LeakyReLU, identity), so a
    boost can be applied before the activation."""
    return isinstance(act, (nn.ReLU, nn.LeakyReLU, nn.Identity))


def bn_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``x * scale + shift``: ``([C], [C])`` from the running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def sliced_conv(
        conv: nn.Conv2d,
        x: torch.Tensor,
        batch: int,
        out_idx: Optional[torch.Tensor] = None,
        in_idx: Optional[torch.Tensor] = None,
        out_scale: Optional[torch.Tensor] = None,
        out_shift: Optional[torch.Tensor] = None,
        in_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Runs ``conv`` on the kept channels of each image only (batch-grouped layout).

    A per-channel affine map after the convolution (an inference BatchNorm, the gate's
    boost) and a per-channel scale of its input (a boost) are folded into the gathered
    weights, so they cost no pass over the activations.

    Args:
        conv: A dense or depthwise Conv2d (see ``check_sliceable_conv``), without bias.
        x: ``[1, B * k_in, H, W]`` the kept input channels ``in_idx`` of each image, or
            ``[B, C_in, H, W]`` all of them when ``in_idx`` is None.
        batch: B.
        out_idx: ``[B, k_out]`` output channels to compute per image; None for all.
        in_idx: ``[B, k_in]`` input channels present in ``x``; None for all. A depthwise
            convolution needs ``in_idx`` equal to ``out_idx``.
        out_scale, out_shift: ``[B * k_out]`` the output becomes ``conv(x) * out_scale + out_shift``.
        in_scale: ``[B * k_in]`` the input is taken as ``x * in_scale`` (per channel).

    Returns:
        ``[1, B * k_out, H', W']`` (``k_out = C_out`` when ``out_idx`` is None).
    """
    w = conv.weight  # [C_out, C_in / groups, kh, kw]
    c_out, c_in, kh, kw = w.shape
    if conv.groups != 1:  # depthwise: channel c reads only input c
        w = w.index_select(0, out_idx.flatten())  # [B * k, 1, kh, kw]
        groups = w.shape[0]
    else:
        # one index_select on contiguous weight pieces: rows of C_in * kh * kw, or single
        # (out, in) kernels of kh * kw
        if in_idx is None:
            w = w.expand(batch, *w.shape).flatten(0, 1) if out_idx is None else w.index_select(0, out_idx.flatten())
        else:
            out = (out_idx if out_idx is not None else
                   torch.arange(c_out, device=w.device).expand(batch, c_out))  # [B, k_out]
            flat = (out[:, :, None] * c_in + in_idx[:, None, :]).flatten()  # [B * k_out * k_in]
            w = w.reshape(c_out * c_in, kh * kw).index_select(0, flat).view(-1, in_idx.shape[1], kh, kw)
        groups = batch
    # w: [B * k_out, k_in, kh, kw], a fresh tensor unless nothing was gathered
    if out_scale is not None or in_scale is not None:
        scale = 1.0
        if out_scale is not None:
            scale = out_scale.reshape(-1, 1, 1, 1)  # per output row
        if in_scale is not None:  # per (image, input channel): rows of image b get in_scale[b]
            per_row = in_scale.reshape(batch, 1, -1).expand(batch, w.shape[0] // batch, -1)
            scale = scale * per_row.reshape(w.shape[0], -1, 1, 1)
        w = w * scale
    x = x.reshape(1, -1, *x.shape[-2:])  # '(b c) h w' as one image with B groups
    if isinstance(conv, Conv2dSame):
        return conv2d_same(x, w, out_shift, conv.stride, (0, 0), conv.dilation, groups)
    return F.conv2d(x, w, out_shift, conv.stride, conv.padding, conv.dilation, groups)


def sliced_affine(scale: torch.Tensor, shift: torch.Tensor, idx: Optional[torch.Tensor],
                  batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``[C]`` scale and shift picked for the batch-grouped layout: ``[B * k]``."""
    if idx is None:
        return scale.repeat(batch), shift.repeat(batch)
    flat = idx.flatten()
    return scale.index_select(0, flat), shift.index_select(0, flat)
