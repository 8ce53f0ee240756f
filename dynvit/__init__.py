"""dynvit: dynamic (input-adaptive) sparse vision models on timm, with per-image MAC accounting."""
__version__ = '0.1.0'

from . import compress, runtime, train
from .models import (
    DynamicVisionTransformer,
    DynamicViTAux,
    EvoVisionTransformer,
    EvoViTAux,
    FBSAux,
    FBSEfficientNet,
    FBSResNet,
    create_model,
    list_models,
    load_checkpoint,
    load_model,
    read_dynvit_metadata,
    save_model,
)
