"""The shapes of structurally pruned models: read from the modules, and applied to a freshly built
model of the same architecture (``dynvit.save_pruned`` stores them in the file's metadata, loading
applies them before the weights)."""
from typing import Dict, List, Sequence

import torch.nn as nn
from timm.models.resnet import BasicBlock

from .structured import prune_attention_heads, prune_block_channels, prune_mlp_units

__all__ = ['pruned_structure', 'apply_structure', 'STRUCTURE_KEY']

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
