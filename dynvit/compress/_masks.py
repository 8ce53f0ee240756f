"""Pruning masks where layers are not called: some modules read their layers' weights in
functional code (gated blocks slicing BatchNorm-folded weights, keep predictors on packed
tokens; ``dynvit.layers.weight_reads``), so torch's per-layer hooks would not refresh a masked
``weight`` there. A pre-hook on such owners recomputes the masked weights of the layers inside
and drops the caches derived from the old ones whenever the trained values or the masks
changed; a forward hook leaves ``weight`` without autograd history after each pass, so a pruned
model can be deep-copied (EMA, ``dense_copy``), which plain ``torch.nn.utils.prune`` refuses.

The mask of a layer is whatever its pruning hook (a ``torch.nn.utils.prune`` method) applies:
a fixed ``weight_mask`` (magnitude pruning) or one computed from trained scores (AutoPrune).
"""
from typing import Any, Callable, Dict, List

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ..layers import drop_weight_caches, reads_layer_weights


def _forget_masked_weight(module: nn.Module) -> None:
    """After a layer's masks or tensors changed: the next refresh recomputes its masked weight,
    and the caches derived from the old one go."""
    module.__dict__.pop('_prune_refresh_keys', None)
    drop_weight_caches(module)


def _pruning_hooks(module: nn.Module) -> List[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def current_mask(module: nn.Module, name: str = 'weight') -> torch.Tensor:
    """The hard 0/1 mask a pruned layer applies to ``name`` now (no autograd)."""
    hook = _hook_for(module, name)
    if hasattr(hook, 'current_mask'):
        return hook.current_mask(module)
    return getattr(module, name + '_mask')


# ---------------------------------------------------------------------------------------------
# keeping masked weights current where layers are not called (functional code)
# ---------------------------------------------------------------------------------------------

def _hook_for(module: nn.Module, name: str) -> prune.BasePruningMethod:
    return next(h for h in _pruning_hooks(module) if h._tensor_name == name)


def _masked_weight(module: nn.Module, name: str = 'weight') -> torch.Tensor:
    """The masked tensor, as the layer's pruning hook computes it."""
    return _hook_for(module, name).apply_mask(module)


def _mask_inputs(module: nn.Module, name: str) -> List[torch.Tensor]:
    """The tensors a layer's masked ``name`` is computed from (trained values, mask or scores)."""
    return [t for t in (getattr(module, name + s, None) for s in ('_orig', '_mask', '_scores')) if t is not None]


def _refresh(module: nn.Module) -> None:
    """Recomputes the masked ``weight`` (e.g. ``weight_orig * weight_mask``) when it may be stale.

    With autograd the product is always recomputed (it must be part of this pass's graph).
    Without, only when the trained values, the mask, the device/dtype or the inference mode
    changed since the last product; then the caches keyed on the old tensor are dropped
    (a new tensor can reuse a freed address, which would fool their ``data_ptr`` key).
    """
    keys = module.__dict__.setdefault('_prune_refresh_keys', {})
    for hook in _pruning_hooks(module):
        name = hook._tensor_name
        key = None
        if not torch.is_grad_enabled():
            inputs = _mask_inputs(module, name)
            key = (tuple((t.data_ptr(), t._version) for t in inputs), inputs[0].dtype, inputs[0].device,
                   torch.is_inference_mode_enabled())
            if keys.get(name) == key:
                continue
        setattr(module, name, hook.apply_mask(module))
        keys[name] = key
        drop_weight_caches(module)


@torch.no_grad()
def detach_masked_weights(model: nn.Module) -> None:
    """Recomputes every masked ``weight`` without autograd. After a training forward ``weight`` is
    a non-leaf tensor, which ``copy.deepcopy`` refuses (a torch.nn.utils.prune limitation)."""
    for m in model.modules():
        for hook in _pruning_hooks(m):
            setattr(m, hook._tensor_name, _masked_weight(m, hook._tensor_name))
        m.__dict__.pop('_prune_refresh_keys', None)


def _refresh_hook(owner: nn.Module, args: Any) -> None:
    """Forward pre-hook of a module that reads its layers' weights without calling them."""
    for m in owner.modules():
        if _pruning_hooks(m):
            _refresh(m)


def _detach_hook(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: once the pass has used them, masked weights become plain tensors again (the
    graph keeps what backward needs). A ``weight`` left with autograd history would hold the
    graph alive and make ``copy.deepcopy`` fail (EMA copies, ``dynvit.models.dense_copy``)."""
    for m in module.modules():
        for hook in _pruning_hooks(m):
            w = getattr(m, hook._tensor_name, None)
            if isinstance(w, torch.Tensor) and w.grad_fn is not None:
                setattr(m, hook._tensor_name, w.detach())


def _functional_owners(model: nn.Module) -> List[nn.Module]:
    """Modules whose forward reads the weights of their layers directly (functional code)."""
    return [m for m in model.modules() if reads_layer_weights(m)]


def _set_hook(hooks: Dict[int, Any], fn: Callable[..., None], register: Callable[[Any], Any], wanted: bool) -> None:
    ids = [k for k, h in hooks.items() if h is fn]
    if wanted and not ids:
        register(fn)
    elif not wanted:
        for k in ids:
            del hooks[k]


def _sync_hooks(model: nn.Module) -> None:
    """Puts ``_refresh_hook`` on every functional owner that holds masked layers and ``_detach_hook``
    on those owners and the masked layers; removes them where no mask is left."""
    owners = {id(m) for m in _functional_owners(model)}
    for m in model.modules():
        masked_here = bool(_pruning_hooks(m))
        owner = id(m) in owners and any(_pruning_hooks(x) for x in m.modules())
        _set_hook(m._forward_pre_hooks, _refresh_hook, m.register_forward_pre_hook, owner)
        _set_hook(m._forward_hooks, _detach_hook, m.register_forward_hook, owner or masked_here)
