"""Preprocessing from a model's data config (timm), for grayscale or color models, and
augmentation that depends only on (seed, epoch, image index)."""
import math
import random
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.constants import DEFAULT_CROP_PCT
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..models import model_input_size

__all__ = ['describe_input', 'model_decode_size', 'model_norm', 'model_transform', 'SeededAugmentation']


def model_norm(model: torch.nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The normalisation ``(mean, std)`` of the model's data config, one value per input channel
    (a three-value mean/std is averaged for a one-channel model, a single value repeated)."""
    cfg = resolve_data_config({}, model=model)
    chans = model_input_size(model)[0]
    mean, std = tuple(float(v) for v in cfg['mean']), tuple(float(v) for v in cfg['std'])
    if len(mean) != chans:
        mean = (sum(mean) / len(mean),) * chans
    if len(std) != chans:
        std = (sum(std) / len(std),) * chans
    return mean, std


def model_transform(model: torch.nn.Module, is_training: bool = False,
                    train_kwargs: Optional[Dict[str, Any]] = None) -> Callable:
    """timm's transform for ``model``'s data config (size, interpolation, crop, mean, std).

    Images are first converted to the model's channels ('L' for one input channel, 'RGB' for
    three), so grayscale and color images both work; a three-value mean/std is averaged for a
    one-channel model.

    Args:
        model: A timm model (its ``pretrained_cfg`` gives the data config).
        is_training: timm's training transform (random resized crop, flip, color jitter...).
        train_kwargs: Overrides for timm's ``create_transform`` in training, e.g.
            ``dict(scale=(0.6, 1.0), color_jitter=0.0)``.
    """
    cfg = resolve_data_config({}, model=model)
    cfg['input_size'] = model_input_size(model)  # the cfg's size may predate img_size / in_chans changes
    chans = cfg['input_size'][0]
    mean, std = model_norm(model)
    kwargs = dict(input_size=cfg['input_size'], interpolation=cfg['interpolation'], mean=mean, std=std,
                  crop_pct=cfg['crop_pct'], crop_mode=cfg.get('crop_mode', 'center'))
    if is_training:
        kwargs.update(train_kwargs or {})
    mode = 'L' if chans == 1 else 'RGB'
    return T.Compose([ConvertMode(mode), create_transform(is_training=is_training, **kwargs)])


def describe_input(model: torch.nn.Module) -> str:
    """What ``model_transform(model)`` makes of an image file, in words (for start-up summaries),
    e.g. '1x28x28 grayscale (color images are converted), resized to 32 px (bicubic) and
    center-cropped to 28x28, normalised with mean 0.286, std 0.353'."""
    cfg = resolve_data_config({}, model=model)
    chans, h, w = model_input_size(model)
    mean, std = model_norm(model)
    kind = 'grayscale (color images are converted)' if chans == 1 else 'RGB (grayscale images are converted)'
    crop_pct = cfg.get('crop_pct') or DEFAULT_CROP_PCT
    resize = math.floor(min(h, w) / crop_pct)
    how = (f'resized to {resize} px ({cfg["interpolation"]}) and {cfg.get("crop_mode", "center")}-cropped to '
           f'{h}x{w}' if resize != min(h, w) else f'resized to {h} px ({cfg["interpolation"]}), cropped to {h}x{w}')
    values = lambda v: ', '.join(f'{x:.3g}' for x in v)  # noqa: E731
    return f'{chans}x{h}x{w} {kind}, {how}, normalised with mean {values(mean)}, std {values(std)}'


def model_decode_size(model: torch.nn.Module) -> int:
    """The pixels both sides of an image need for ``model_transform``'s evaluation resize (its
    target, the input size over ``crop_pct``): a larger image decoded at a reduced scale that keeps
    them (``load_image(path, min_size)``) gives nearly the same model input, at a fraction of
    the memory."""
    cfg = resolve_data_config({}, model=model)
    _, h, w = model_input_size(model)
    crop_pct = cfg.get('crop_pct') or DEFAULT_CROP_PCT
    return max(h, w, *(math.floor(s / crop_pct) for s in (h, w)))


class ConvertMode:
    """``image.convert(mode)`` as a picklable transform (DataLoader workers). Transparent images
    are composited on white first, and 16-bit / float grayscale is scaled to 8 bits (PIL's own
    conversion would clip it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image):
        if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (image.mode == 'P' and 'transparency' in image.info):
            rgba = image.convert('RGBA')
            image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
        elif image.mode.startswith('I') or image.mode == 'F':
            a = np.asarray(image, dtype=np.float32)
            image = Image.fromarray(np.clip(a * _to_8bit(image.mode, float(a.max())), 0, 255).round().astype(np.uint8),
                                    'L')
        return image.convert(self.mode)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.mode!r})'


def _to_8bit(mode: str, top: float) -> float:
    """The factor that brings a 16-bit, 32-bit or float grayscale image (largest value ``top``) to
    0-255: 16-bit by 1/257; 32-bit integers beyond 16 bits by their largest value; floats in
    [0, 1] by 255; 8-bit values (an 'I' image holding them) as they are."""
    if mode.startswith('I;16') or mode == 'I' and 255 < top <= 65535:
        return 1 / 257
    if mode == 'I' and top > 65535:
        return 255 / top
    return 255.0 if mode == 'F' and top <= 1.0 else 1.0


class SeededAugmentation(Dataset):
    """Wraps a dataset so that each item's random augmentation is drawn from a generator seeded
    by (seed, epoch, index): the same image gets the same augmentation whatever the batch, the
    worker or the process that loads it, so a resumed or a multi-process run sees exactly the
    data of a single uninterrupted one. The global random state is left as it was.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = hash((self.seed, self.epoch, int(index))) & 0x7FFFFFFF
        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                random.seed(item_seed)
                return self.dataset[index]
        finally:
            random.setstate(state)
