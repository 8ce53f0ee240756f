"""Training, validation and test sets by name: 'fashion-mnist' or a folder of images."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .fashion_mnist import FashionMNIST
from .folders import _has_train_val, image_folder, split_indices
from .transforms import model_transform

__all__ = ['build_datasets', 'describe_split']


def _is_fashion_mnist(data: str) -> bool:
    return data.lower().replace('_', '-') == 'fashion-mnist'


def describe_split(data: str, split: str = 'val', val_fraction: float = 0.1, seed: int = 0) -> str:
    """In words, which images ``build_datasets(data, ..., split=split)`` returns as its second set
    (what ``dynvit eval`` scores)."""
    if _is_fashion_mnist(data):
        if split == 'test':
            return "Fashion-MNIST's test split"
        return f"the validation split: {val_fraction:.0%} of Fashion-MNIST's training split held out (seed {seed})"
    if _has_train_val(Path(data)):
        return f'the validation split: the images in {Path(data) / "val"}'
    return f'the validation split: {val_fraction:.0%} of the images of every class held out (seed {seed})'


def build_datasets(
        data: str,
        model: nn.Module,
        data_root: Optional[str] = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_kwargs: Optional[Dict[str, Any]] = None,
        augment: bool = True,
        split: str = 'val',
        skip_unreadable: bool = False,
) -> Tuple[Dataset, Dataset, List[str]]:
    """``(train, validation or test, class names)`` preprocessed for ``model``.

    Args:
        data: 'fashion-mnist' (the IDX files in ``data_root``: training on the train split minus a
            held-out, stratified ``val_fraction`` of it, which validates; the test split only with
            ``split='test'``) or the path of an image folder (``root/<class>/...``, split by
            ``val_fraction``, or ``root/train`` + ``root/val``).
        model: Gives the preprocessing (its data config; 1 or 3 input channels).
        data_root: Fashion-MNIST's folder (default: the Debian package's).
        val_fraction, seed: The validation split of an image folder.
        train_kwargs: Overrides for timm's training transform.
        augment: False: the training set gets the validation preprocessing.
        split: 'val' (the held-out part) or, for Fashion-MNIST, 'test' (the 10k test images) as the
            second set.
        skip_unreadable: An image folder's unreadable files are left out (else an error names them).
    """
    if split not in ('val', 'test'):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    train_tf = model_transform(model, is_training=augment, train_kwargs=train_kwargs)
    val_tf = model_transform(model, is_training=False)
    if _is_fashion_mnist(data):
        train = FashionMNIST(data_root, 'train', train_tf)
        train_idx, val_idx = split_indices(train.targets.tolist(), val_fraction, seed)
        if split == 'test':
            return Subset(train, train_idx), FashionMNIST(data_root, 'test', val_tf), list(train.classes)
        return Subset(train, train_idx), Subset(FashionMNIST(data_root, 'train', val_tf), val_idx), list(train.classes)
    if split == 'test':
        raise ValueError("split='test' exists for Fashion-MNIST only; an image folder has train and val")
    return image_folder(data, val_fraction, seed, train_tf, val_tf, skip_unreadable)
