from ._factory import create_model, list_models
from ._io import load_checkpoint, load_model, read_dynvit_metadata, save_model
from .dynamic_vit import DynamicVisionTransformer, DynamicViTAux
from .evo_vit import EvoVisionTransformer, EvoViTAux
