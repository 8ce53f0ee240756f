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
import threading
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame, conv2d_same

from .weight_reads import cache_name, tracing

__all__ = [
    'ChannelGate', 'importance_bias', 'gaussian_relu_mean', 'gaussian_abs_mean', 'num_kept', 'select_channels',
    'masked_saliency', 'check_sliceable_conv', 'check_batch_norm',
    'bn_affine', 'folded_conv_bn', 'sliced_weight', 'sliced_conv', 'shared_conv', 'channel_union', 'scatter_pooled',
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
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The fresh gate: weights ~ N(0, 0.01^2), biases 1."""
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.ones_(self.fc.bias)

    @property
    def in_channels(self) -> int:
        return self.fc.in_features

    @property
    def out_channels(self) -> int:
        return self.fc.out_features

    def forward_kept(self, pooled: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The saliency ``[B, C_out]`` from the pooled values ``[B, k]`` of the input channels ``idx``
        ``[B, k]`` only (the others are 0): one batched product with those columns of the weight
        (inference: the transposed weight is cached, its rows gathered into a reused buffer)."""
        B, k = idx.shape
        w = self.fc.weight
        rows = _gather_rows(self.fc, _transposed(self.fc, w), idx.flatten()).view(B, k, w.shape[0])  # [B, k, C_out]
        return F.relu(torch.baddbmm(self.fc.bias.view(1, 1, -1), pooled.unsqueeze(1), rows)).squeeze(1)

    @torch.no_grad()
    def keep_channels(self, outputs: Optional[torch.Tensor] = None, inputs: Optional[torch.Tensor] = None) -> None:
        """Keeps the gated channels ``outputs`` (rows) and the pooled inputs ``inputs`` (columns), in
        place: the gate of a convolution whose channels were cut out (structured pruning)."""
        w, b = self.fc.weight, self.fc.bias
        if outputs is not None:
            outputs = outputs.to(w.device)
            w, b = w.index_select(0, outputs), b.index_select(0, outputs)
        if inputs is not None:
            w = w.index_select(1, inputs.to(w.device))
        self.fc.weight = nn.Parameter(w.clone(), requires_grad=self.fc.weight.requires_grad)
        self.fc.bias = nn.Parameter(b.clone(), requires_grad=self.fc.bias.requires_grad)
        self.fc.out_features, self.fc.in_features = w.shape

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, C_in]`` pooled input -> ``[B, C_out]`` saliency (>= 0). Without autograd the product
        and the ReLU are one op (``aten._addmm_activation``: the same addmm and ReLU on the CPU,
        one cuBLASLt call with a ReLU epilogue on a GPU)."""
        if torch.is_grad_enabled() or pooled.ndim != 2:
            return F.relu(self.fc(pooled))
        return torch._addmm_activation(self.fc.bias, pooled, self.fc.weight.t())


def importance_bias(importance: torch.Tensor, spread: float = 0.1) -> torch.Tensor:
    """Gate biases ``[C]`` that rank channels by ``importance`` ``[C]``:
    ``1 + spread * (rank / (C - 1) - 1/2)``, rank 0 the least important channel (float32).

    With zero gate weights every image then keeps the same, most important, channels, each
    boosted by about 1 (within ``1 +- spread / 2``): a gated network starts as static magnitude
    pruning rather than as random channel dropping, and the gates learn from there which
    channels each input needs.
    """
    c = importance.numel()
    rank = torch.empty(c, dtype=torch.float32, device=importance.device)
    rank[importance.float().argsort()] = torch.arange(c, dtype=torch.float32, device=importance.device)
    return 1 + spread * (rank / max(1, c - 1) - 0.5)


def gaussian_relu_mean(mean: torch.Tensor, std: torch.Tensor, cap: Optional[float] = None) -> torch.Tensor:
    """``E[min(max(z, 0), cap)]`` for ``z ~ N(mean, std^2)``, elementwise (ReLU, or ReLU6 with ``cap=6``).

    After an inference BatchNorm with scale ``g`` and shift ``b`` a channel is about ``N(b, g^2)``,
    so this is the mean activation of the channel, known from the weights alone.
    """
    std = std.abs().clamp_min(1e-6)
    normal = torch.distributions.Normal(0.0, 1.0)

    def relu_mean(m: torch.Tensor) -> torch.Tensor:  # E[max(z, 0)]
        a = m / std
        return m * normal.cdf(a) + std * normal.log_prob(a).exp()

    out = relu_mean(mean)
    return out if cap is None else out - relu_mean(mean - cap)


def gaussian_abs_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E|z|`` for ``z ~ N(mean, std^2)``, elementwise."""
    return gaussian_relu_mean(mean, std) + gaussian_relu_mean(-mean, std)


def num_kept(density: float, channels: int) -> int:
    """Channels a gate keeps: ``ceil(density * channels)``, at least 1 (float error forgiven)."""
    return max(1, min(channels, math.ceil(density * channels - 1e-6)))


def select_channels(saliency: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Winner-take-all: the ``k`` most salient channels of each image, most salient first: their
    saliencies ``[B, k]`` (the boost; with gradient) and indices ``[B, k]`` int64, one top-k."""
    return saliency.topk(k, dim=1)


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
        raise ValueError(f'{where}: convolutions with a bias are not supported (FBS folds the BatchNorm '
                         f'that follows into the sliced weights)')


def check_batch_norm(bn: nn.Module, where: str) -> None:
    """Raises a ValueError unless ``bn`` is a BatchNorm2d (timm ``BatchNormAct2d`` included) with
    running statistics, which the skipping inference folds into the sliced convolution."""
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
        raise ValueError(f'{where}: FBS needs BatchNorm2d with running statistics after a gated convolution, '
                         f'got {type(bn).__name__}')


def bn_affine(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``x * scale + shift``: ``([C], [C])`` from the running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def folded_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by the inference ``bn`` as one convolution: ``(weight, bias)``.

    Without autograd the result is cached on ``conv`` and recomputed when any of the tensors
    involved changes (new values, device or dtype), so inference folds once, not per call.
    With autograd, or while compiling, it is computed afresh (and differentiable).
    """
    if torch.is_grad_enabled() or tracing():
        scale, shift = bn_affine(bn)
        return conv.weight * scale.reshape(-1, 1, 1, 1), shift
    tensors = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    try:
        key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:  # inference tensors have no version counter: do not cache
        key = None
    cached = conv.__dict__.get(cache_name('folded'))
    if key is not None and cached is not None and cached[0] == (key, bn.eps):
        return cached[1], cached[2]
    scale, shift = bn_affine(bn)
    weight = (conv.weight * scale.reshape(-1, 1, 1, 1)).contiguous()
    if key is not None:
        conv.__dict__[cache_name('folded')] = ((key, bn.eps), weight, shift)
    return weight, shift


def folded_shortcut(downsample: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """A residual shortcut at inference: ``x`` itself, or ``downsample(x)`` with a trailing
    ``Conv2d`` + ``BatchNorm2d`` run as one convolution (``folded_conv_bn``; what precedes them,
    e.g. ResNet-D's average pool, runs as it is). Any other downsample runs unchanged."""
    if downsample is None:
        return x
    if not (isinstance(downsample, nn.Sequential) and len(downsample) >= 2 and type(downsample[-2]) is nn.Conv2d
            and type(downsample[-1]) is nn.BatchNorm2d and not downsample[-1].training):
        return downsample(x)
    for module in list(downsample)[:-2]:
        x = module(x)
    conv = downsample[-2]
    w, b = folded_conv_bn(conv, downsample[-1])
    return _run_conv(conv, x, w, b, conv.groups)


def _gather_rows(owner: nn.Module, src: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``src.index_select(0, rows)``; without autograd into a buffer kept on ``owner`` (one per
    thread) and reused by the next call. Gathered weights are megabytes, fresh each call: a new
    allocation each time costs page faults comparable to the convolution itself. (A compiled
    graph plans its own buffers.)"""
    if torch.is_grad_enabled() or tracing():
        return src.index_select(0, rows)
    buffers = owner.__dict__.setdefault('_gather_buffers', {})
    key = (threading.get_ident(), src.dtype, src.device)
    buf = buffers.get(key)
    if buf is None or buf.is_inference() != torch.is_inference_mode_enabled():
        buf = buffers[key] = torch.empty(0, dtype=src.dtype, device=src.device)
    return torch.index_select(src, 0, rows, out=buf.resize_(rows.numel(), src.shape[1]))


def sliced_weight(
        conv: nn.Conv2d,
        batch: int,
        out_idx: Optional[torch.Tensor] = None,
        in_idx: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The rows (output channels) and columns (input channels) of ``conv``'s weight each image needs.

    Args:
        conv: A dense or depthwise Conv2d (see ``check_sliceable_conv``).
        batch: B.
        out_idx: ``[B, k_out]`` output channels per image; None for all.
        in_idx: ``[B, k_in]`` input channels per image; None for all. Ignored by a depthwise
            convolution, whose channel c reads only input c.
        weight, bias: The full ``[C_out, C_in / groups, kh, kw]`` weight and ``[C_out]`` bias
            to slice (default: the conv's own; ``folded_conv_bn`` gives BatchNorm folded in).

    Returns:
        ``[B * k_out, k_in, kh, kw]`` weight (``[B * k, 1, kh, kw]`` if depthwise) and
        ``[B * k_out]`` bias (None without bias).
    """
    w = conv.weight if weight is None else weight  # [C_out, C_in / groups, kh, kw]
    b = conv.bias if bias is None else bias
    c_out, c_in, kh, kw = w.shape
    if out_idx is not None and b is not None:
        b = b.index_select(0, out_idx.flatten())
    elif b is not None:
        b = b.repeat(batch)
    if conv.groups != 1:  # depthwise
        return _gather_rows(conv, w.reshape(c_out, -1), out_idx.flatten()).view(-1, 1, kh, kw), b
    # one index_select on contiguous weight pieces: rows of C_in * kh * kw, or single
    # (out, in) kernels of kh * kw
    if in_idx is None:
        if out_idx is None:
            return w.expand(batch, *w.shape).flatten(0, 1), b
        return _gather_rows(conv, w.reshape(c_out, -1), out_idx.flatten()).view(-1, c_in, kh, kw), b
    out = out_idx if out_idx is not None else torch.arange(c_out, device=w.device).expand(batch, c_out)
    flat = torch.add(in_idx[:, None, :], out[:, :, None], alpha=c_in).flatten()  # out * c_in + in: [B * k_out * k_in]
    return _gather_rows(conv, w.reshape(c_out * c_in, kh * kw), flat).view(-1, in_idx.shape[1], kh, kw), b


def _run_conv(conv: nn.Conv2d, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
              groups: int) -> torch.Tensor:
    if isinstance(conv, Conv2dSame):
        return conv2d_same(x, w, b, conv.stride, (0, 0), conv.dilation, groups)
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, groups)


def sliced_conv(
        conv: nn.Conv2d,
        x: torch.Tensor,
        batch: int,
        out_idx: Optional[torch.Tensor] = None,
        in_idx: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Runs ``conv`` on the kept channels of each image only (batch-grouped layout).

    Args:
        conv: A dense or depthwise Conv2d (see ``check_sliceable_conv``): its geometry.
        x: ``[1, B * k_in, H, W]`` the kept input channels ``in_idx`` of each image, or
            ``[B, C_in, H, W]`` all of them when ``in_idx`` is None.
        batch: B.
        out_idx, in_idx, weight, bias: As for ``sliced_weight``.

    Returns:
        ``[1, B * k_out, H', W']`` (``k_out = C_out`` when ``out_idx`` is None).
    """
    if _is_pointwise(conv) and (out_idx is None or in_idx is None):
        return _sliced_pointwise(conv, x, batch, out_idx, in_idx, weight, bias)
    w, b = sliced_weight(conv, batch, out_idx, in_idx, weight, bias)  # [B * k_out, k_in, kh, kw]
    x = x.reshape(1, -1, *x.shape[-2:])  # '(b c) h w' as one image with B groups
    return _run_conv(conv, x, w, b, w.shape[0] if conv.groups != 1 else batch)


def _is_pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1, stride-1, ungrouped convolution without padding: a matrix product per image."""
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and (isinstance(conv, Conv2dSame) or conv.padding in ((0, 0), 'valid')))


def _sliced_pointwise(conv, x, batch, out_idx, in_idx, weight, bias) -> torch.Tensor:
    """A 1x1 convolution on the kept channels as one batched matrix product (no weight reorder
    for the convolution kernel: the gathered rows are used as they are)."""
    w = (conv.weight if weight is None else weight).flatten(1)  # [C_out, C_in]
    b = conv.bias if bias is None else bias
    c_out, c_in = w.shape
    H, W = x.shape[-2:]
    xm = x.reshape(batch, -1, H * W)  # 'b c (h w)': [B, k_in, HW]
    if in_idx is not None:  # rows of the transposed weight: [B, k_in, C_out] -> [B, C_out, k_in]
        wm = _gather_rows(conv, _transposed(conv, w), in_idx.flatten()).view(batch, -1, c_out).transpose(1, 2)
        b = None if b is None else b.reshape(1, c_out, 1)
    elif out_idx is not None:
        wm = _gather_rows(conv, w, out_idx.flatten()).view(batch, -1, c_in)  # [B, k_out, C_in]
        b = None if b is None else b.index_select(0, out_idx.flatten()).view(batch, -1, 1)
    else:
        wm = w.expand(batch, c_out, c_in)
        b = None if b is None else b.reshape(1, c_out, 1)
    y = torch.bmm(wm, xm) if b is None else torch.baddbmm(b, wm, xm)  # [B, k_out, HW]
    return y.view(1, -1, H, W)


def _transposed(owner: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """``w.t()`` contiguous; without autograd cached on ``owner`` while ``w`` is unchanged."""
    if torch.is_grad_enabled() or tracing():
        return w.t().contiguous()
    try:
        key = (w.data_ptr(), w._version, w.shape, w.dtype, w.device)
    except RuntimeError:  # inference tensors have no version counter
        return w.t().contiguous()
    cached = owner.__dict__.get(cache_name('transposed'))
    if cached is None or cached[0] != key:
        cached = owner.__dict__[cache_name('transposed')] = (key, w.t().contiguous())
    return cached[1]


def shared_conv(
        conv: nn.Conv2d,
        x: torch.Tensor,
        out_idx: Optional[torch.Tensor] = None,
        in_idx: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Runs ``conv`` on one channel subset shared by the whole batch (e.g. the union of the
    images' kept channels): ``x`` ``[B, k_in, H, W]`` holds input channels ``in_idx`` ``[k_in]``,
    the result ``[B, k_out, H', W']`` output channels ``out_idx`` ``[k_out]``."""
    w, b = sliced_weight(conv, 1, None if out_idx is None else out_idx[None],
                         None if in_idx is None else in_idx[None], weight, bias)
    return _run_conv(conv, x, w, b, w.shape[0] if conv.groups != 1 else 1)


def channel_union(idx: torch.Tensor) -> torch.Tensor:
    """The channels kept by any image of the batch, ascending ``[U]``."""
    return torch.unique(idx)
