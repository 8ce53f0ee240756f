"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv:1708.07747) read from its IDX files.

On Debian/Ubuntu the package ``dataset-fashion-mnist`` installs the four gzipped IDX files under
``/usr/share/datasets/fashion-mnist``; any folder holding them (gzipped or not) works too.
"""
import gzip
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ['FashionMNIST', 'CLASSES', 'DEFAULT_ROOT', 'read_idx']

DEFAULT_ROOT = os.environ.get('DYNVIT_FASHION_MNIST', '/usr/share/datasets/fashion-mnist')
CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
          'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
           0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into an array, with a clear error for a damaged file."""
    opener = gzip.open if str(path).endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f'cannot read IDX file {path}: {e}') from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f'{path} is not an IDX file (bad magic number)')
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f'{path} is truncated (header)')
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f'{path} is truncated or has trailing bytes: {len(data)} bytes, expected {expected} '
                         f'for shape {shape}')
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f'{name}.gz', root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f'Fashion-MNIST file {name}(.gz) not found in {root}. Install the data with '
        f'`sudo apt install dataset-fashion-mnist` (Debian/Ubuntu: /usr/share/datasets/fashion-mnist), or pass the '
        f'folder holding the IDX files (root=... / --data-root, or the DYNVIT_FASHION_MNIST environment variable)')


class FashionMNIST(Dataset):
    """Fashion-MNIST images (28x28 grayscale PIL images) and labels.

    Args:
        root: Folder with the IDX files (default: ``DEFAULT_ROOT``).
        split: 'train' (60k) or 'test' (10k).
        transform: Applied to each PIL image.
    """
    classes: List[str] = CLASSES

    def __init__(self, root: Optional[str] = None, split: str = 'train',
                 transform: Optional[Callable] = None) -> None:
        if split not in _FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root or DEFAULT_ROOT)
        images_file, labels_file = (_find(root, n) for n in _FILES[split])
        self.images = read_idx(str(images_file))
        self.targets = read_idx(str(labels_file)).astype(np.int64)
        if self.images.ndim != 3 or self.targets.ndim != 1 or len(self.images) != len(self.targets):
            raise ValueError(f'{images_file} and {labels_file} do not hold N images and N labels: '
                             f'shapes {self.images.shape} and {self.targets.shape}')
        bad = np.flatnonzero((self.targets < 0) | (self.targets >= len(CLASSES)))
        if len(bad):
            raise ValueError(f'{labels_file}: label {self.targets[bad[0]]} at index {bad[0]} is outside 0..'
                             f'{len(CLASSES) - 1}')
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        image = Image.fromarray(self.images[index])  # uint8 [28, 28]: mode 'L'
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

