"""Unstructured magnitude pruning for the dense and the dynamic models.

Paper: Learning both Weights and Connections for Efficient Neural Networks (Han, Pool, Tran,
Dally; NeurIPS 2015), arXiv:1506.02626: remove the weights of smallest magnitude, fine-tune
the rest, repeat.

Individual weights of ``nn.Linear`` and ``nn.Conv2d`` layers are zeroed through
``torch.nn.utils.prune``. The layer keeps ``weight_orig`` (trained) and a ``weight_mask``
buffer; ``weight`` is recomputed as their product before every forward, so fine-tuning cannot
revive a pruned weight. The tensors keep their size: this saves storage after compression, not
MACs. ``remove_masks`` makes the pruning permanent (plain ``weight`` parameters again).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ._masks import _forget_masked_weight, _masked_weight, _pruning_hooks, _sync_hooks, current_mask
from ._select import Include, masked_layers, prunable_layers

__all__ = ['magnitude_prune', 'remove_masks', 'sparsity', 'SparsityStats']


def _mask_counts(module: nn.Module) -> Tuple[int, int]:
    """(pruned entries, entries) of a layer's weight according to its mask."""
    mask = current_mask(module) if _pruning_hooks(module) else None
    n = module.weight_orig.numel() if mask is not None else module.weight.numel()
    return (0 if mask is None else int((mask == 0).sum())), n


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The effective weight, recomputed from the mask (``module.weight`` may be stale)."""
    return _masked_weight(module) if _pruning_hooks(module) else module.weight


@torch.no_grad()
def magnitude_prune(
        model: nn.Module,
        amount: float,
        scope: str = 'global',
        include: Include = None,
        exclude: Include = None,
) -> Dict[str, nn.Module]:
    """Zeroes the weights of smallest magnitude (Han et al. 2015) until ``amount`` of them are pruned.

    ``amount`` is the target *total* fraction: weights pruned earlier stay pruned and count
    towards it, and the new ones are the smallest among the remaining weights (so calling it
    with growing amounts is iterative pruning; a smaller amount prunes nothing more). Biases
    are not pruned. Masks live in ``weight_mask`` buffers and forward pre-hooks
    (``torch.nn.utils.prune``); call ``remove_masks`` to make the pruning permanent.

    Args:
        model: Any model; dynvit's dynamic ones included.
        amount: Fraction of the selected weights to be zero afterwards, in [0, 1).
        scope: ``'global'``: one magnitude threshold over all selected layers (layers end up
            with different sparsities); ``'layer'``: every layer pruned to ``amount``.
        include, exclude: Which layers, see ``prunable_layers``.

    Returns:
        The pruned layers ``{name: layer}``.
    """
    if isinstance(amount, bool) or not 0.0 <= float(amount) < 1.0:
        raise ValueError(f'amount must be a fraction in [0, 1), got {amount!r}')
    if scope not in ('global', 'layer'):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model, include, exclude)
    if not layers:
        raise ValueError('no nn.Linear / nn.Conv2d layer selected for pruning; check include/exclude')
    modules = list(layers.values())
    for n, m in layers.items():
        if _pruning_hooks(m) and not hasattr(m, 'weight_mask'):
            raise ValueError(f'{n} is pruned by AutoPrune (trained scores); finalize_autoprune before magnitude pruning')
    for m in modules:
        if hasattr(m, 'weight_mask'):
            setattr(m, 'weight', _masked_weight(m))  # torch's pruning ranks what `weight` holds
    if scope == 'layer':
        for m in modules:
            pruned, n = _mask_counts(m)
            extra = int(round(float(amount) * n)) - pruned
            if extra > 0 or not hasattr(m, 'weight_mask'):
                prune.l1_unstructured(m, 'weight', amount=max(extra, 0),
                                      importance_scores=_current_weight(m).abs())
    else:
        counts = [_mask_counts(m) for m in modules]
        extra = int(round(float(amount) * sum(n for _, n in counts))) - sum(p for p, _ in counts)
        if extra > 0 or not all(hasattr(m, 'weight_mask') for m in modules):
            prune.global_unstructured(
                [(m, 'weight') for m in modules], pruning_method=prune.L1Unstructured, amount=max(extra, 0),
                importance_scores={(m, 'weight'): _current_weight(m).abs() for m in modules})
    for m in modules:
        _forget_masked_weight(m)
    _sync_hooks(model)
    return layers


@torch.no_grad()
def remove_masks(model: nn.Module) -> nn.Module:
    """Makes magnitude pruning permanent: every masked layer gets a plain ``weight`` parameter
    holding its masked values (zeros stay zeros but are no longer enforced), and the masks and
    hooks go. Do this before saving with ``dynvit.save_model`` or exporting.

    Returns:
        ``model``.
    """
    for m in model.modules():
        if _pruning_hooks(m):
            for hook in _pruning_hooks(m):
                name = hook._tensor_name
                setattr(m, name, _masked_weight(m, name))  # remove() reads `weight`, which may be stale
                prune.remove(m, name)
            _forget_masked_weight(m)
    _sync_hooks(model)
    return model


@dataclass
class SparsityStats:
    """Zero weights per layer and overall.

    Attributes:
        counts: ``{layer name: (zero weights, weights)}``.
    """
    counts: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def layers(self) -> Dict[str, float]:
        """Fraction of zero weights of each layer."""
        return {n: z / max(t, 1) for n, (z, t) in self.counts.items()}

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.counts.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.counts.values())

    @property
    def overall(self) -> float:
        """Fraction of zero weights over all the layers."""
        return self.zeros / max(self.total, 1)

    def to_dict(self) -> Dict[str, Any]:
        return dict(overall=self.overall, zeros=self.zeros, total=self.total, layers=self.layers)

    def __str__(self) -> str:
        width = max([5] + [len(n) for n in self.counts])
        rows = [f'{"layer":<{width}} {"weights":>10} {"zero":>7}']
        rows += [f'{n:<{width}} {t:>10} {z / max(t, 1):>7.1%}' for n, (z, t) in self.counts.items()]
        rows.append(f'{"total":<{width}} {self.total:>10} {self.overall:>7.1%}')
        return '\n'.join(rows)


@torch.no_grad()
def sparsity(model: nn.Module, include: Include = None, exclude: Include = None) -> SparsityStats:
    """Counts the zero weights of the prunable layers (``prunable_layers``) and of every masked layer.

    Zeros are counted in the effective weights (``weight_orig * weight_mask`` for masked
    layers), biases are not counted.
    """
    layers = {**prunable_layers(model, include, exclude), **masked_layers(model)}
    names = [n for n, _ in model.named_modules() if n in layers]  # model order
    counts = {}
    for n in names:
        w = _current_weight(layers[n])
        counts[n] = (int((w == 0).sum()), w.numel())
    return SparsityStats(counts)
