"""The one way a model argument becomes a model: ``arch``, ``arch.tag`` or a dynvit file, with
optional weights from another file. Every command that takes a model uses ``resolve_model``."""
from typing import Any, Optional, Tuple

import torch.nn as nn

from .factory import create_model
from .files import read_dynvit_metadata
from .zoo import current_name

__all__ = ['MODEL_FILE_SUFFIXES', 'model_and_file', 'resolve_model']

MODEL_FILE_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin')


def model_and_file(name: str, what: str = 'model') -> Tuple[str, Optional[str]]:
    """``(architecture name, weights file)`` for a model argument: a dynvit file stands for its
    architecture and its weights; a name has no file."""
    if not name.endswith(MODEL_FILE_SUFFIXES):
        return current_name(name), None
    meta = read_dynvit_metadata(name)
    if meta is None:
        raise ValueError(f'{what} {name} is not a dynvit model file (dynvit convert makes one); or give a model '
                         f'name and the file as --checkpoint')
    return meta['architecture'], name


def resolve_model(name: str, checkpoint: Optional[str] = None, pretrained: bool = False,
                  **kwargs: Any) -> Tuple[nn.Module, str]:
    """The model a user names, and where its weights came from.

    Args:
        name: ``arch`` (random weights unless ``pretrained``), ``arch.tag`` (its pretrained
            weights: the zoo's offline, or a hub's) or a dynvit file (its architecture and weights).
        checkpoint: Take the weights from this file instead (a dynvit, timm or official
            checkpoint, through the family's checkpoint filter; the classifier is reset the timm
            way when ``num_classes`` differs).
        pretrained: Load the default pretrained weights of a bare ``arch``.
        **kwargs: Model arguments (sparsity settings, ``num_classes``, ...), over what a file stores.

    Returns:
        The model (as built: train mode) and its weights' source: ``'file PATH'``,
        ``'pretrained ARCH.TAG'`` or ``'random'``.
    """
    if checkpoint is not None and not str(checkpoint).strip():
        raise ValueError('the checkpoint path is empty: give the weights file (or leave --checkpoint out)')
    name, file = model_and_file(name)
    weights = checkpoint or file
    if weights:
        return create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs), f'file {weights}'
    if '.' in name or pretrained:
        return create_model(name, pretrained=True, **kwargs), f'pretrained {name}'
    return create_model(name, **kwargs), 'random'
