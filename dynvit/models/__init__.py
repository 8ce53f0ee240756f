from ._factory import create_model, list_models
from ._io import load_checkpoint, load_model, read_dynvit_metadata, save_model
from .dynamic_vit import DynamicVisionTransformer, DynamicViTAux
from .evo_vit import EvoVisionTransformer, EvoViTAux
from ._fbs import FBSAux
from .fbs_resnet import FBSBasicBlock, FBSResNet
from .fbs_efficientnet import FBSEfficientNet, FBSInvertedResidual, lite0_package_weights


def dense_copy(model):
    """A deep copy of a dynvit model with its sparsification off (keep ratio / density 1.0): the
    same network computing everything, e.g. a distillation teacher or a speed baseline."""
    import copy
    dense = copy.deepcopy(model)
    if isinstance(dense, (FBSResNet, FBSEfficientNet)):
        dense.density = 1.0
    elif isinstance(dense, (DynamicVisionTransformer, EvoVisionTransformer)):
        dense.keep_ratio = 1.0
        if isinstance(dense, DynamicVisionTransformer):
            dense.mode = 'topk'  # threshold mode would still drop tokens
    else:
        raise TypeError(f'{type(model).__name__} is not a dynvit model')
    return dense
