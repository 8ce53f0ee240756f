"""Modules that read their layers' weights without calling the layers (functional code), and the
caches derived from those weights.

A module whose forward reads the weights of the layers inside it (sliced, folded with a norm,
transposed) sets ``reads_layer_weights = True``: code that changes weights behind the layers'
backs (pruning masks, ``dynvit.compress``) then refreshes them before such a module runs. Values
derived from a layer's weight are cached on the layer under names starting with ``CACHE_PREFIX``
(``cache_name``); ``drop_weight_caches`` forgets them when the weight changes.
"""
import torch
import torch.nn as nn

__all__ = ['CACHE_PREFIX', 'cache_name', 'drop_weight_caches', 'reads_layer_weights', 'tracing']

CACHE_PREFIX = '_weight_cache_'


def cache_name(what: str) -> str:
    """The attribute under which a layer caches ``what`` it derived from its weight."""
    return CACHE_PREFIX + what


def drop_weight_caches(module: nn.Module) -> None:
    """Forgets every value cached on ``module`` from its weight (the weight changed)."""
    for name in [k for k in module.__dict__ if k.startswith(CACHE_PREFIX)]:
        del module.__dict__[name]


def reads_layer_weights(module: nn.Module) -> bool:
    """Whether ``module``'s forward reads the weights of its layers without calling them."""
    return bool(getattr(module, 'reads_layer_weights', False))


def tracing() -> bool:
    """Whether torch.compile or an export is tracing the code: then no Python-side caches (they
    key on tensor identities and would break the graph); the compiler keeps its own."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()
