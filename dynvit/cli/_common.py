"""Helpers the commands share: naming a model by name or by file, argument types, --int8."""
import argparse
from typing import Optional, Tuple

import torch.nn as nn

MODEL_FILE_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin')


def model_and_file(name: str, what: str = 'model') -> Tuple[str, Optional[str]]:
    """``(architecture name, weights file)`` for a model argument: a dynvit file stands for its
    architecture and its weights; a name has no file."""
    from .. import read_dynvit_metadata
    if not name.endswith(MODEL_FILE_SUFFIXES):
        return name, None
    meta = read_dynvit_metadata(name)
    if meta is None:
        raise ValueError(f'{what} {name} is not a dynvit model file (dynvit convert makes one); or give a model '
                         f'name and the file as --checkpoint')
    return meta['architecture'], name


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def int8_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument('--int8', action='store_true',
                   help='run the linear layers in INT8 (dynamic quantization, CPU; keep predictors and gates stay float)')


def maybe_int8(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``--int8``: the INT8 copy of ``model`` (``dynvit.compress.quantize_int8``)."""
    if not getattr(args, 'int8', False):
        return model
    from ..compress import quantize_int8
    return quantize_int8(model)
