from ._factory import create_model, list_models
from ._io import load_checkpoint, load_model, read_dynvit_metadata, save_model
from .dynamic_vit import DynamicVisionTransformer, DynamicViTAux
from .evo_vit import EvoVisionTransformer, EvoViTAux
from ._fbs import FBSAux
from .fbs_resnet import FBSBasicBlock, FBSResNet
from .fbs_efficientnet import FBSEfficientNet, FBSInvertedResidual, lite0_package_weights
