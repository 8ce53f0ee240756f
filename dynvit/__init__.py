"""dynvit: dynamic (input-adaptive) sparse vision models on timm, with per-image MAC accounting.

``import dynvit`` is light (no torch): the subpackages and the names below load on first use, so
the command line starts fast. Its architectures are registered in timm as soon as timm is
imported (now, if it already is), so ``timm.create_model('<arch>')`` works after ``import dynvit``
as after any timm plugin; ``dynvit.create_model(...)`` (or ``import dynvit.models``) registers them too.
"""
import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any, List

__version__ = '0.2.0'

_SUBMODULES = ('backends', 'compress', 'data', 'export', 'hub', 'layers', 'losses', 'models', 'predict', 'runtime',
               'train', 'viz')
_NAMES = {
    'backends': ('BackendChoice', 'CudaGraphModel', 'choose_backend'),
    'hub': ('create_model', 'list_models', 'load_checkpoint', 'load_model', 'read_dynvit_metadata', 'save_model',
            'save_pruned', 'resolve_model'),
    'models': ('DynamicModel', 'DynamicAux', 'StagedTokenViT', 'TokenSparseViT', 'TokenAux', 'apply', 'dense_copy',
               'model_input_size'),
}


def _home() -> dict:
    """Where each top-level name lives: the names above, and every family's (its spec's exports)."""
    from .families import exported_names
    return {**{name: f'{__name__}.{module}' for module, names in _NAMES.items() for name in names},
            **exported_names()}


__all__ = list(_SUBMODULES) + sorted(_home())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f'{__name__}.{name}')
    home = _home().get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


def _importing_dynvit() -> bool:
    """Whether a module of this package is being imported right now (it imported timm itself)."""
    return any(getattr(getattr(m, '__spec__', None), '_initializing', False)
               for name, m in list(sys.modules.items()) if name.startswith(f'{__name__}.'))


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Registers dynvit's architectures once timm has been imported (like a timm plugin), without
    importing torch before anything asks for timm."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                run(module)
                if not _importing_dynvit():  # else that import goes on, and registers when it needs to
                    importlib.import_module(f'{__name__}.models')

            spec.loader.exec_module = exec_module
        return spec


if 'timm' in sys.modules:
    importlib.import_module(f'{__name__}.models')
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
