"""AutoPrune: unstructured pruning learnt through trained auxiliary parameters.

Paper: AutoPrune: Automatic Network Pruning by Regularizing Auxiliary Parameters (Xiao, Wang,
Rajasekaran; NeurIPS 2019, proceedings paper 9521).

Every selected weight ``w`` gets an auxiliary score ``m`` (``weight_scores``, same shape). The
forward uses ``w * h(m)`` with the hard mask ``h(m) = step(m) = [m > 0]``; the backward passes
a straight-through gradient to ``m`` through a leaky hard sigmoid,
``dh/dm = 1 / (2 a)`` for ``|m| <= a`` and ``leak / (2 a)`` outside, so a pruned weight
(``m < 0``) still receives gradient and comes back when the loss needs it. The weights
themselves are not regularised: the regulariser acts on the scores only, ``lambda * mean(h(m))``
(the kept fraction, whose gradient through the same estimator pushes every score down), and
the task loss pushes up the scores of the weights it needs. Which weights end pruned is decided
by the sign of ``m``, not by a hand-set magnitude threshold; ``lambda`` trades accuracy for
sparsity.

Scores start at ``init`` (all weights kept). ``finalize_autoprune`` bakes the masks into the
weights. The layers use the ``torch.nn.utils.prune`` hook protocol, so everything that works
with magnitude pruning (layers read in functional code, ``sparsity``, EMA copies,
``remove_masks``) works here too.
"""
from typing import Dict

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ._masks import _forget_masked_weight, _pruning_hooks, _sync_hooks
from ._select import Include, prunable_layers

__all__ = ['AutoPruneMethod', 'step_ste', 'apply_autoprune', 'autoprune_layers', 'autoprune_penalty',
           'finalize_autoprune', 'SCORES_SUFFIX']

SCORES_SUFFIX = '_scores'


class _StepSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m: torch.Tensor, width: float, leak: float) -> torch.Tensor:
        ctx.save_for_backward(m)
        ctx.width, ctx.leak = width, leak
        return (m > 0).to(m.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (m,) = ctx.saved_tensors
        slope = torch.where(m.abs() <= ctx.width, 1.0, ctx.leak) / (2 * ctx.width)
        return grad * slope.to(grad.dtype), None, None


def step_ste(m: torch.Tensor, width: float = 1.0, leak: float = 0.1) -> torch.Tensor:
    """``[m > 0]`` as a float mask, with the leaky hard-sigmoid straight-through gradient.

    Args:
        m: Scores.
        width: ``a``: the surrogate's slope is ``1 / (2 a)`` on ``[-a, a]``.
        leak: Fraction of that slope outside ``[-a, a]`` (> 0 lets far-pruned weights recover).
    """
    return _StepSTE.apply(m, float(width), float(leak))


class AutoPruneMethod(prune.BasePruningMethod):
    """``torch.nn.utils.prune`` method whose mask is ``step_ste(weight_scores)``: recomputed from
    the trained scores at every forward (the layer has ``weight_orig`` and ``weight_scores``
    parameters, no mask buffer)."""
    PRUNING_TYPE = 'unstructured'

    def __init__(self, width: float = 1.0, leak: float = 0.1) -> None:
        self.width, self.leak = width, leak

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        return default_mask

    def scores(self, module: nn.Module) -> torch.Tensor:
        return getattr(module, self._tensor_name + SCORES_SUFFIX)

    def current_mask(self, module: nn.Module) -> torch.Tensor:
        """The hard mask now (no autograd)."""
        return (self.scores(module).detach() > 0).to(getattr(module, self._tensor_name + '_orig').dtype)

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        orig = getattr(module, self._tensor_name + '_orig')
        return orig * step_ste(self.scores(module), self.width, self.leak)

    @classmethod
    def apply(cls, module: nn.Module, name: str, width: float = 1.0, leak: float = 0.1,  # type: ignore[override]
              init: float = 1.0) -> 'AutoPruneMethod':
        if _pruning_hooks(module):
            raise ValueError(f'{type(module).__name__} already carries a pruning mask; call remove_masks first')
        method = cls(width, leak)
        method._tensor_name = name
        orig = getattr(module, name)
        module.register_parameter(name + '_orig', nn.Parameter(orig.detach().clone()))
        module.register_parameter(name + SCORES_SUFFIX, nn.Parameter(torch.full_like(orig.detach(), float(init))))
        del module._parameters[name]
        setattr(module, name, method.apply_mask(module).detach())
        module.register_forward_pre_hook(method)
        return method

    def remove(self, module: nn.Module) -> None:
        """Bakes the hard mask into a plain ``weight`` parameter; the scores go."""
        name = self._tensor_name
        with torch.no_grad():
            weight = getattr(module, name + '_orig') * self.current_mask(module)
        if hasattr(module, name):
            delattr(module, name)
        orig = module._parameters.pop(name + '_orig')
        orig.data = weight
        del module._parameters[name + SCORES_SUFFIX]
        setattr(module, name, orig)


def _autoprune_hooks(module: nn.Module):
    return [h for h in _pruning_hooks(module) if isinstance(h, AutoPruneMethod)]


def autoprune_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The layers with AutoPrune scores, by name."""
    return {n: m for n, m in model.named_modules() if _autoprune_hooks(m)}


def apply_autoprune(
        model: nn.Module,
        include: Include = None,
        exclude: Include = None,
        init: float = 1.0,
        width: float = 1.0,
        leak: float = 0.1,
) -> Dict[str, nn.Module]:
    """Gives the selected layers' weights AutoPrune scores (all weights kept at first).

    Train the model with ``autoprune_penalty`` added to the loss (``TrainConfig.autoprune_weight``
    in dynvit's trainer); the scores are parameters named ``*.weight_scores`` and belong in the
    optimizer without weight decay. Then ``finalize_autoprune``.

    Args:
        model: Any model; dynvit's dynamic ones included.
        include, exclude: Which layers, see ``prunable_layers`` (default: not the classifier,
            patch embedding, keep predictors or gates).
        init: Starting score (> 0: kept). Its distance from 0 is how much evidence pruning a
            weight takes.
        width, leak: The straight-through surrogate (see ``step_ste``).

    Returns:
        The layers ``{name: layer}``.
    """
    if not init > 0 or not width > 0 or not 0 < leak <= 1:
        raise ValueError(f'need init > 0, width > 0 and 0 < leak <= 1, got init={init}, width={width}, leak={leak}')
    layers = prunable_layers(model, include, exclude)
    if not layers:
        raise ValueError('no nn.Linear / nn.Conv2d layer selected for AutoPrune; check include/exclude')
    for name, m in layers.items():
        if _pruning_hooks(m):
            raise ValueError(f'{name} already carries a pruning mask; call remove_masks first')
    for m in layers.values():
        AutoPruneMethod.apply(m, 'weight', width=width, leak=leak, init=init)
        _forget_masked_weight(m)
    _sync_hooks(model)
    return layers


def autoprune_penalty(model: nn.Module) -> torch.Tensor:
    """The regulariser: the fraction of AutoPrune-scored weights kept now, ``mean(h(m))`` over all
    of them, differentiable in the scores through the straight-through estimator."""
    kept, total = None, 0
    for m in model.modules():
        for hook in _autoprune_hooks(m):
            s = hook.scores(m)
            k = step_ste(s, hook.width, hook.leak).sum()
            kept = k if kept is None else kept + k
            total += s.numel()
    if kept is None:
        raise ValueError('the model has no AutoPrune layers (apply_autoprune first)')
    return kept / total


def finalize_autoprune(model: nn.Module) -> nn.Module:
    """Makes AutoPrune's decisions permanent: plain ``weight`` parameters with the pruned entries
    zero, the scores removed. Returns ``model``."""
    from .magnitude import remove_masks
    if not autoprune_layers(model):
        raise ValueError('the model has no AutoPrune layers')
    return remove_masks(model)
