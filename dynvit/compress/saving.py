"""Saving and rebuilding compressed models: structurally pruned shapes go into the file's metadata."""
import copy
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock

from ._masks import _detach_masked_weights
from ._select import masked_layers
from .magnitude import remove_masks, sparsity
from .structured import prune_attention_heads, prune_block_channels, prune_mlp_units

__all__ = ['pruned_structure', 'apply_structure', 'save_pruned', 'load_pruned', 'STRUCTURE_KEY']

STRUCTURE_KEY = 'pruned_structure'


def pruned_structure(model: nn.Module) -> Dict[str, List[int]]:
    """The per-block sizes that structured pruning changes, read from the modules.

    ViTs: ``{'num_heads': [...], 'mlp_hidden': [...]}`` one entry per block; basic-block
    ResNets: ``{'block_widths': [...]}`` the conv1 channels of each block (``basic_blocks``
    order). ``apply_structure`` shrinks a freshly built model of the same architecture to it.
    """
    if hasattr(model, 'blocks') and all(hasattr(b, 'attn') and hasattr(b, 'mlp') for b in model.blocks):
        out = dict(num_heads=[int(b.attn.num_heads) for b in model.blocks])
        if all(isinstance(getattr(b.mlp, 'fc1', None), nn.Linear) for b in model.blocks):
            out['mlp_hidden'] = [int(b.mlp.fc1.out_features) for b in model.blocks]
        return out
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if blocks:
        return dict(block_widths=[int(b.conv1.out_channels) for b in blocks])
    raise ValueError(f'{type(model).__name__}: structured pruning supports timm ViT blocks and ResNet basic blocks')


def apply_structure(model: nn.Module, structure: Dict[str, Sequence[int]]) -> nn.Module:
    """Shrinks a model built with the original sizes to ``structure`` (from ``pruned_structure``).

    The first heads / units / channels are kept: the weights are meant to be loaded afterwards.

    Returns:
        ``model``.
    """
    unknown = set(structure) - {'num_heads', 'mlp_hidden', 'block_widths'}
    if unknown:
        raise ValueError(f'unknown structure entries {sorted(unknown)}')
    current = pruned_structure(model)
    for key, sizes in structure.items():
        if key not in current:
            raise ValueError(f'{type(model).__name__} has no {key!r} to shrink (it has {sorted(current)})')
        have = current[key]
        if len(sizes) != len(have) or any(int(s) < 1 or int(s) > h for s, h in zip(sizes, have)):
            raise ValueError(f'{key}: {list(sizes)} does not fit the model, whose blocks have {have}')
        keep = [list(range(int(s))) if int(s) < h else None for s, h in zip(sizes, have)]
        fn = dict(num_heads=prune_attention_heads, mlp_hidden=prune_mlp_units, block_widths=prune_block_channels)[key]
        fn(model, keep=keep)
    return model


def save_pruned(model: nn.Module, path: str, extra: Optional[Dict[str, Any]] = None,
                dtype: Optional[Union[str, torch.dtype]] = None) -> None:
    """``dynvit.save_model`` for a model that may be pruned; ``load_pruned`` (or ``load_model``,
    or ``create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))``) rebuilds it.

    The per-block sizes (``pruned_structure``, for the models structured pruning supports) go
    into the file's ``extra`` metadata under ``'pruned_structure'``: the model constructors
    build uniform blocks, so the stored ``model_args`` alone would rebuild the unpruned shapes.
    Pruning masks (magnitude or AutoPrune) are made permanent in the saved copy (``remove_masks``
    on a copy; ``model`` keeps its masks).

    Args:
        model: A dynvit model created by name.
        path: Target ``.safetensors`` file.
        extra: More JSON-serialisable metadata.
        dtype: Storage precision ('fp32', 'fp16', 'bf16'; see ``dynvit.save_model``).
    """
    from ..models import save_model

    target = model
    if masked_layers(model):
        _detach_masked_weights(model)  # in case a layer ran outside a hooked forward: deepcopy needs leaves
        target = remove_masks(copy.deepcopy(model))
    meta = dict(extra or {})
    try:
        meta[STRUCTURE_KEY] = pruned_structure(target)
    except ValueError:  # a family structured pruning does not handle: its shapes are the constructor's
        pass
    meta['weight_sparsity'] = sparsity(target).overall
    save_model(target, path, extra=meta, dtype=dtype)


def load_pruned(path: str, **kwargs: Any) -> nn.Module:
    """Rebuilds a model saved by ``save_pruned``: ``dynvit.load_model`` reads the stored
    ``pruned_structure`` and shrinks the blocks before loading the weights.

    Args:
        path: A dynvit ``.safetensors`` file.
        **kwargs: Override stored model arguments (as for ``dynvit.load_model``).
    """
    from ..models import load_model

    return load_model(path, **kwargs)
