"""The architectures, registered in timm (importing this module registers them). Every family
implements the ``DynamicModel`` protocol (``_base``); token-reducing ViTs share ``TokenSparseViT``,
those that select at stages by keep ratios ``StagedTokenViT``. The families' modules are the ones
their specs name (``dynvit.families``); their public names are found there too."""
import importlib
from typing import Any, List

from ..families import all_specs, exported_names
from ._apply import apply, list_methods, register_method
from ._base import DynamicAux, DynamicModel, all_sparsity_args, setting
from ._helpers import adapt_input_channels, check_state_dict, model_input_size
from ._staged import StagedTokenViT
from ._tags import WEIGHTS_DIR, zoo_index
from ._token_vit import TokenAux, TokenSparseViT

for _spec in all_specs():  # registers every family's architectures in timm
    for _module in _spec.models:
        importlib.import_module(_module)

__all__ = ['DynamicAux', 'DynamicModel', 'StagedTokenViT', 'TokenAux', 'TokenSparseViT', 'WEIGHTS_DIR',
           'adapt_input_channels', 'all_sparsity_args', 'apply', 'check_state_dict', 'dense_copy', 'list_methods', 'model_input_size', 'register_method', 'setting', 'zoo_index',
           *exported_names()]


def __getattr__(name: str) -> Any:
    module = exported_names().get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(module), name)


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


def dense_copy(model: DynamicModel):
    """``model.dense_copy()``: a deep copy with the sparsity off (the same network computing everything)."""
    if not isinstance(model, DynamicModel):
        raise TypeError(f'{type(model).__name__} is not a dynvit model')
    return model.dense_copy()
