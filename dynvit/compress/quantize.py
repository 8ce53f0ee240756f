"""INT8 post-training quantization of the linear layers for CPU inference.

PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``; integer-arithmetic
inference as in Jacob et al., arXiv:1712.05877): each selected ``nn.Linear`` stores its weight
as int8 with one scale per output channel, and quantizes its input per call from the input's
own range, so no calibration data is needed. The products run in int8 with int32
accumulation (fbgemm / oneDNN on x86, qnnpack on ARM).

It composes with the dynamic models: the token-dropping ViTs call their qkv, projection, MLP
and classifier layers as modules on whatever tokens they kept, so the gathered tokens go
through the INT8 layers. Layers that other code reads as raw weights stay float: the sparse
modules (keep predictors and channel gates, which decide what to drop); channel-gated
convolutions are sliced per image in functional code and stay float too (only the classifier
of a channel-gated CNN is INT8).

Reduced-precision *storage* (fp16 / bf16 files) is ``dynvit.save_model(..., dtype='fp16')``.
"""
import warnings
from typing import Dict

import torch
import torch.nn as nn

from ._select import Include, masked_layers, prunable_layers

__all__ = ['int8_layers', 'quantize_int8', 'is_quantized']

_KEEP_FLOAT = ('predictor', 'gate')  # groups read as raw weights by functional code


def int8_layers(model: nn.Module, include: Include = None, exclude: Include = None) -> Dict[str, nn.Linear]:
    """The ``nn.Linear`` layers ``quantize_int8`` converts, by name.

    Args:
        model: Any model.
        include: As for ``prunable_layers``; None selects every linear layer of the blocks and
            the classifier(s) (``('default', 'head')``).
        exclude: Layers to leave in float.
    """
    layers = prunable_layers(model, ('default', 'head') if include is None else include, exclude)
    special = prunable_layers(model, _KEEP_FLOAT)
    clash = sorted(set(layers) & set(special))
    if clash:
        raise ValueError(f'{clash[0]} is read as raw weights by the model (a keep predictor or channel gate) and cannot '
                         f'be INT8; leave the predictor and gate groups out of include')
    return {n: m for n, m in layers.items() if type(m) is nn.Linear}


def quantize_int8(model: nn.Module, include: Include = None, exclude: Include = None,
                  per_channel: bool = True) -> nn.Module:
    """An INT8 copy of ``model`` for CPU inference (``model`` itself is unchanged).

    Args:
        model: A float model (dense or dynamic), moved to the CPU.
        include, exclude: Which linear layers (see ``int8_layers``).
        per_channel: One weight scale per output channel (more accurate) instead of one per tensor.

    Returns:
        The quantized copy in eval mode; its sparsity settings (keep ratio, density) still apply.
        It cannot be trained or saved: quantize after loading.
    """
    if masked_layers(model):
        raise ValueError('the model carries pruning masks; make them permanent first (dynvit.compress.remove_masks)')
    if any(p.device.type != 'cpu' for p in model.parameters()):
        raise ValueError('INT8 dynamic quantization runs on the CPU: move the model there first (model.cpu())')
    layers = int8_layers(model, include, exclude)
    if not layers:
        raise ValueError('no nn.Linear layer selected for INT8; check include/exclude')
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel
               else torch.ao.quantization.default_dynamic_qconfig)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # torch.ao's eager quantization warns of its move to torchao
            warnings.simplefilter('ignore', DeprecationWarning)
            warnings.simplefilter('ignore', UserWarning)
            q = torch.ao.quantization.quantize_dynamic(model, {n: qconfig for n in layers}, dtype=torch.qint8)
    finally:
        model.train(was_training)
    q.__dict__['_dynvit_int8'] = sorted(layers)
    return q.eval()


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds INT8 layers."""
    return any(isinstance(m, torch.ao.nn.quantized.Linear) for m in model.modules())
