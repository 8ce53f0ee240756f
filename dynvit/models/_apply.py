"""Applying a dynamic method to a model that is already built (e.g. any timm ViT), keeping its weights.

A family that can do this registers itself with ``register_method``; ``dynvit.apply(model,
method=..., **settings)`` dispatches to it (``list_methods()`` names them). A training-free
method is used this way in practice, e.g. ``dynvit.apply(timm.create_model('deit_small_patch16_224',
pretrained=True), METHOD, **settings)``.
"""
from typing import Any, Callable, Dict, List

import torch.nn as nn

__all__ = ['apply', 'list_methods', 'register_method']

_METHODS: Dict[str, Callable[..., nn.Module]] = {}


def register_method(name: str, fn: Callable[..., nn.Module]) -> None:
    """Registers ``fn(model, **settings) -> model`` as the method ``name`` (lower case)."""
    _METHODS[name.lower()] = fn


def list_methods() -> List[str]:
    """The methods ``apply`` knows."""
    return sorted(_METHODS)


def apply(model: nn.Module, method: str, **settings: Any) -> nn.Module:
    """Turns a built model into the dynamic ``method``'s model, keeping its weights.

    Args:
        model: The model (e.g. a timm ``VisionTransformer``).
        method: A name from ``list_methods()``.
        **settings: The method's sparsity settings (its ``set_sparsity`` keywords).

    Returns:
        The dynvit model; use the returned object: ``model(x, return_aux=True)`` gives the
        per-image report, ``model.set_sparsity(...)`` changes the settings. A method converts in
        place (the same object, its class swapped) or builds a new model with a copy of the
        weights (``model`` left as it was); each method's function says which.

    Raises:
        ValueError: The method is unknown or cannot handle this model (the message says why).
    """
    fn = _METHODS.get(str(method).lower())
    if fn is None:
        raise ValueError(f'unknown method {method!r}; known: {", ".join(list_methods())}')
    return fn(model, **settings)
