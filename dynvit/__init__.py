"""dynvit: dynamic (input-adaptive) sparse vision models on timm, with per-image MAC accounting.

``import dynvit`` is light (no torch): the subpackages and the names below load on first use, so
the command line starts fast. ``dynvit.create_model(...)`` (or ``import dynvit.models``)
registers the architectures in timm, after which ``timm.create_model('dynamicvit_...')`` works too.
"""
import importlib
from typing import Any, List

__version__ = '0.2.0'

_SUBMODULES = ('compress', 'data', 'export', 'hub', 'layers', 'losses', 'models', 'predict', 'runtime', 'train',
               'viz')
_NAMES = {
    'hub': ('create_model', 'list_models', 'load_checkpoint', 'load_model', 'read_dynvit_metadata', 'save_model',
            'save_pruned', 'resolve_model'),
    'models': ('DynamicModel', 'DynamicAux', 'TokenSparseViT', 'TokenAux', 'DynamicVisionTransformer', 'DynamicViTAux',
               'EvoVisionTransformer', 'EvoViTAux', 'EViT', 'EViTAux', 'ToMeVisionTransformer', 'ToMeAux', 'FBSAux',
               'FBSEfficientNet', 'FBSResNet', 'apply', 'dense_copy', 'evit_from_vit'),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}

__all__ = list(_SUBMODULES) + sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f'{__name__}.{name}')
    if name in _HOME:
        value = getattr(importlib.import_module(f'{__name__}.{_HOME[name]}'), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
