"""FBS ResNet: timm's basic-block ResNet with a channel gate on both convolutions of every block.

Paper: Dynamic Channel Pruning: Feature Boosting and Suppression (Gao, Zhao, Dudziak,
Mullins, Xu; ICLR 2019), arXiv:1810.05331.

In each ``BasicBlock`` gate 1 picks the output channels of ``conv1`` from the block input and
gate 2 those of ``conv2`` from ``conv1``'s (gated) output. At inference ``conv1`` computes
only its kept channels, ``conv2`` reads only those and computes only its own kept channels,
and these are added into the shortcut (a suppressed ``conv2`` channel adds nothing). The
stem, the downsample shortcuts (their BatchNorm folded at inference) and the classifier stay dense. At density 0.5 ``conv1``
costs half and ``conv2`` a quarter of its dense MACs.

``density=1.0`` switches the gates off: the model is then timm's ResNet, bit for bit.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from ..layers.channel_gate import (
    ChannelGate,
    channel_union,
    folded_conv_bn,
    folded_shortcut,
    gaussian_abs_mean,
    gaussian_relu_mean,
    masked_saliency,
    select_channels,
    shared_conv,
    sliced_conv,
)
from ..runtime.macs import conv2d_macs, conv_macs, linear_macs
from ._tags import zoo_cfgs
from ._fbs import (
    FBSAux,
    FBSModel,
    GatedBlock,
    TensorGetter,
    bn_params,
    check_gated_convs,
    fbs_checkpoint_filter,
    input_column_norms,
    relu_cap,
)
from ._helpers import build_dynamic_model, run_block

__all__ = ['FBSBasicBlock', 'FBSResNet']


class FBSBasicBlock(GatedBlock, BasicBlock):
    """timm ``BasicBlock`` with FBS gates on ``conv1`` (``gate1``) and ``conv2`` (``gate2``)."""
    _gate_names = ('gate1', 'gate2')
    _map_conv = 'conv1'

    def __init__(self, inplanes: int, planes: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(inplanes, planes, *args, **kwargs)
        if not isinstance(self.aa, nn.Identity) or self.se is not None:
            raise ValueError('FBS ResNet blocks do not support anti-aliasing (aa_layer) or attention '
                             '(attn_layer) layers: they would read the suppressed channels')
        check_gated_convs(self, ('conv1', 'conv2'), ('bn1', 'bn2'), 'FBSBasicBlock')
        self.gate1 = ChannelGate(inplanes, self.conv1.out_channels)
        self.gate2 = ChannelGate(self.conv1.out_channels, self.conv2.out_channels)

    def _masked(self, x: torch.Tensor, given: Sequence[Optional[torch.Tensor]]):
        k1, k2 = self.num_keep()
        s1, idx1 = self._decide(self.gate1, x.mean((2, 3)), k1, given[0])
        h = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        h = h * masked_saliency(s1, idx1)[:, :, None, None]
        s2, idx2 = self._decide(self.gate2, h.mean((2, 3)), k2, given[1])
        y = self.bn2(self.conv2(h)) * masked_saliency(s2, idx2)[:, :, None, None]
        if self.drop_path is not None:
            y = self.drop_path(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act2(y + shortcut), [idx1, idx2], [s1, s2], None

    def _skipped(self, x: torch.Tensor):
        # the channels are taken most salient first (one top-k, whose values are the boost)
        B = x.shape[0]
        k1, k2 = self.num_keep()
        s1 = self.gate1(x.mean((2, 3)))
        v1, idx1 = select_channels(s1, k1)  # [B, k1] saliency (the boost) and channels
        w, b = folded_conv_bn(self.conv1, self.bn1)
        h = self.act1(sliced_conv(self.conv1, x, B, idx1, weight=w, bias=b))  # [1, B * k1, H, W]
        h = h * v1.reshape(1, -1, 1, 1)  # boost
        s2 = self.gate2.forward_kept(h.mean((2, 3)).reshape(B, k1), idx1)  # gate 2 reads only conv1's kept channels
        v2, idx2 = select_channels(s2, k2)
        w, b = folded_conv_bn(self.conv2, self.bn2)
        y = sliced_conv(self.conv2, h, B, idx2, idx1, weight=w, bias=b)  # [1, B * k2, H, W]
        y = y * v2.reshape(1, -1, 1, 1)
        shortcut = folded_shortcut(self.downsample, x)
        C = shortcut.shape[1]
        # suppressed conv2 channels add nothing to the shortcut: add rows b * C + idx2[b] of '(b c) (h w)'
        rows = idx2[0] if B == 1 else torch.add(idx2, torch.arange(B, device=x.device)[:, None], alpha=C).flatten()
        out = shortcut.reshape(B * C, -1).index_add(0, rows, y.reshape(B * k2, -1)).view_as(shortcut)
        return self.act2(out), [idx1, idx2], [s1, s2], None

    def _skipped_union(self, x: torch.Tensor):
        # the whole batch computes the channels any of its images kept; the others' are zero
        k1, k2 = self.num_keep()
        s1, idx1 = self._decide(self.gate1, x.mean((2, 3)), k1)
        u1 = channel_union(idx1)
        w, b = folded_conv_bn(self.conv1, self.bn1)
        h = self.act1(shared_conv(self.conv1, x, u1, weight=w, bias=b))  # [B, U1, H, W]
        h = h * masked_saliency(s1, idx1).index_select(1, u1)[:, :, None, None]
        pooled = h.new_zeros(x.shape[0], self.gate2.in_channels).index_copy_(1, u1, h.mean((2, 3)))
        s2, idx2 = self._decide(self.gate2, pooled, k2)
        u2 = channel_union(idx2)
        w, b = folded_conv_bn(self.conv2, self.bn2)
        y = shared_conv(self.conv2, h, u2, u1, weight=w, bias=b)  # [B, U2, H, W]
        y = y * masked_saliency(s2, idx2).index_select(1, u2)[:, :, None, None]
        shortcut = folded_shortcut(self.downsample, x)
        return self.act2(shortcut.index_add(1, u2, y)), [idx1, idx2], [s1, s2], [u1.numel(), u2.numel()]

    def keep_hidden_channels(self, keep: torch.Tensor) -> None:
        """Structured pruning kept the channels ``keep`` between ``conv1`` and ``conv2``: gate 1
        (one output per ``conv1`` channel) keeps those outputs, gate 2 (which reads ``conv1``'s
        pooled output) those inputs; the density then applies to the remaining channels."""
        self.gate1.keep_channels(outputs=keep)
        self.gate2.keep_channels(inputs=keep)

    def _gate_importance(self, tensor: TensorGetter) -> List[torch.Tensor]:
        # conv1 channel: mean activation times how strongly conv2 (with bn2) reads it;
        # conv2 channel: the mean magnitude it adds to the shortcut
        bn1, bn2 = bn_params(tensor, 'bn1', self.bn1), bn_params(tensor, 'bn2', self.bn2)
        h = gaussian_relu_mean(bn1.beta, bn1.gamma, relu_cap(self.act1))
        return [h * input_column_norms(tensor('conv2.weight'), bn2.scale), gaussian_abs_mean(bn2.beta, bn2.gamma)]

    def _count_macs(self, in_hw, out_hw, kept: Optional[torch.Tensor]) -> Union[int, torch.Tensor]:
        k1, k2 = (None, None) if kept is None else (kept[:, 0], kept[:, 1])
        macs = conv2d_macs(self.conv1, out_hw, out_channels=k1) + conv2d_macs(self.conv2, out_hw, k1, k2)
        if self.downsample is not None:
            macs = macs + conv_macs(self.downsample, int(out_hw[0]) * int(out_hw[1]))
        if kept is not None:  # gate 2 reads conv1's kept channels only
            macs = macs + linear_macs(self.gate1) + k1 * self.gate2.out_channels
        return macs


class FBSResNet(FBSModel, ResNet):
    """timm ``ResNet`` with ``FBSBasicBlock`` blocks.

    Args:
        density: Fraction of the channels each gate keeps, ``ceil(density * C)``; 1.0 switches
            the gates off (the dense ResNet).
        execution: How inference skips channels: 'auto', 'grouped', 'loop' or 'mask' (see
            ``set_sparsity``).
        **kwargs: timm ``ResNet`` arguments (``layers``, ``channels``, ``stem_type``, ...);
            the block is always ``FBSBasicBlock``.
    """

    def __init__(self, *, density: float = 0.5, execution: str = 'auto', **kwargs: Any) -> None:
        if 'block' in kwargs:
            raise ValueError('FBSResNet always uses FBSBasicBlock; do not pass block=')
        model_args = dict(kwargs)
        super().__init__(block=FBSBasicBlock, **kwargs)
        self._init_fbs(density, execution)
        self.model_args = model_args

    def forward_features(
            self,
            x: torch.Tensor,
            decisions: Optional[Sequence[torch.Tensor]] = None,
            return_aux: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, FBSAux]]:
        """Stem, then the gated blocks; returns the final feature map ``[B, C, h, w]``
        (and the ``FBSAux`` with ``return_aux``)."""
        trace = self._start_trace(x, self.in_chans, decisions, return_aux)
        x = self.act1(self.bn1(self.conv1(x)))
        if trace is not None:
            trace.fixed_macs['stem'] = conv_macs(self.conv1, x.shape[-2] * x.shape[-1])
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in layer:
                x = run_block(self, blk, x, trace)
        return self._end_trace(x, trace, linear_macs(self.fc), return_aux)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: FBSResNet) -> Dict[str, torch.Tensor]:
    """Loads an FBS ResNet checkpoint, or a dense timm/torchvision ResNet one with fresh gates."""
    state_dict = state_dict.get('model', state_dict)
    return fbs_checkpoint_filter(state_dict, model, classifier='fc.')


def _create_fbs_resnet(variant: str, model_args: Dict[str, Any], pretrained: bool = False,
                       **kwargs: Any) -> FBSResNet:
    return build_dynamic_model(FBSResNet, variant, pretrained, checkpoint_filter_fn,
                               'FBS blocks compute a different channel subset per image', model_args, **kwargs)


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:1810.05331',
        'paper_name': 'Dynamic Channel Pruning: Feature Boosting and Suppression', **kwargs,
    }


_HUB_NOTE = 'timm\'s ResNet ImageNet-1k weights as the backbone; gates untrained (fine-tune first)'

default_cfgs = generate_default_cfgs({
    # Dense backbones from timm's hub; the gates start fresh and FBS fine-tunes from these.
    'fbs_resnet18.tv_in1k': _cfg(hf_hub_id='timm/resnet18.tv_in1k', license='bsd-3-clause', notes=(_HUB_NOTE,)),
    'fbs_resnet18.a1_in1k': _cfg(hf_hub_id='timm/resnet18.a1_in1k', interpolation='bicubic', crop_pct=0.95,
                                 license='apache-2.0', notes=(_HUB_NOTE,)),
    'fbs_resnet34.tv_in1k': _cfg(hf_hub_id='timm/resnet34.tv_in1k', license='bsd-3-clause', notes=(_HUB_NOTE,)),
    'fbs_resnet34.a1_in1k': _cfg(hf_hub_id='timm/resnet34.a1_in1k', interpolation='bicubic', crop_pct=0.95,
                                 license='apache-2.0', notes=(_HUB_NOTE,)),
    'test_fbs_resnet.untrained': _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1)),
    'test_fbs_resnet2.untrained': _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1),
                                       first_conv='conv1.0'),
    # trained by the zoo (weights/): Fashion-MNIST
    **zoo_cfgs('fbs_resnet18_half', _cfg),
    'fbs_resnet18_half.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def fbs_resnet18(pretrained: bool = False, **kwargs: Any) -> FBSResNet:
    """FBS ResNet-18 (basic blocks 2-2-2-2), density 0.5."""
    model_args = dict(layers=(2, 2, 2, 2))
    return _create_fbs_resnet('fbs_resnet18', model_args, pretrained, **kwargs)


@register_model
def fbs_resnet34(pretrained: bool = False, **kwargs: Any) -> FBSResNet:
    """FBS ResNet-34 (basic blocks 3-4-6-3), density 0.5."""
    model_args = dict(layers=(3, 4, 6, 3))
    return _create_fbs_resnet('fbs_resnet34', model_args, pretrained, **kwargs)


@register_model
def fbs_resnet18_half(pretrained: bool = False, **kwargs: Any) -> FBSResNet:
    """FBS ResNet-18 at half width (32-64-128-256 channels, 32-wide stem), the zoo's Fashion-MNIST
    CNN (64-px inputs). Density 0.5 by default."""
    model_args = dict(layers=(2, 2, 2, 2), channels=(32, 64, 128, 256), stem_width=32)
    return _create_fbs_resnet('fbs_resnet18_half', model_args, pretrained, **kwargs)


@register_model
def test_fbs_resnet(pretrained: bool = False, **kwargs: Any) -> FBSResNet:
    """Tiny FBS ResNet for tests: 8-16-32-64 channels, one block per stage, 32 px."""
    model_args = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, num_classes=10,
                      zero_init_last=False)
    return _create_fbs_resnet('test_fbs_resnet', model_args, pretrained, **kwargs)


@register_model
def test_fbs_resnet2(pretrained: bool = False, **kwargs: Any) -> FBSResNet:
    """Tiny FBS ResNet for tests: deep stem, average-pool downsampling, two blocks in stage 1,
    density 0.3."""
    model_args = dict(layers=(2, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8, stem_type='deep',
                      avg_down=True, num_classes=10, zero_init_last=False, density=0.3)
    return _create_fbs_resnet('test_fbs_resnet2', model_args, pretrained, **kwargs)
