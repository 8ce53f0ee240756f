"""The architectures, registered in timm (importing this module registers them). Every family
implements the ``DynamicModel`` protocol (``_base``); token-sparse ViTs share ``TokenSparseViT``."""
from ._base import DynamicAux, DynamicModel, all_sparsity_args
from ._token_vit import TokenAux, TokenSparseViT
from .dynamic_vit import DynamicVisionTransformer, DynamicViTAux
from .evo_vit import EvoVisionTransformer, EvoViTAux
from .evit import EViT, EViTAux, evit_from_vit
from ._apply import apply, list_methods, register_method
from .tome import ToMeAux, ToMeVisionTransformer, apply_tome
from ._fbs import FBSAux, FBSModel
from .fbs_resnet import FBSBasicBlock, FBSResNet
from .fbs_efficientnet import FBSEfficientNet, FBSInvertedResidual, lite0_package_weights


def dense_copy(model: DynamicModel):
    """``model.dense_copy()``: a deep copy with the sparsity off (the same network computing everything)."""
    if not isinstance(model, DynamicModel):
        raise TypeError(f'{type(model).__name__} is not a dynvit model')
    return model.dense_copy()
