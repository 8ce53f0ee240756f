"""Image folders in the class-per-subfolder layout (torchvision ``ImageFolder``), with a
validation split, and clear errors for the ways a folder can be wrong."""
import copy
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

__all__ = ['IMAGE_SUFFIXES', 'ImageReadError', 'folder_classes', 'image_folder', 'load_image', 'skip_reason',
           'skipped_files', 'split_indices', 'unreadable_reason']

# torchvision's list (what its ImageFolder reads) and GIF, which PIL reads as well
IMAGE_SUFFIXES = tuple(IMG_EXTENSIONS) + ('.gif',)


def skip_reason(path: Path) -> Optional[str]:
    """Why a file in an image folder is not read as an image (None: it is read)."""
    if path.name.startswith('.'):
        return 'hidden file (e.g. a macOS resource fork)'
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f'not an image type dynvit reads ({" ".join(IMAGE_SUFFIXES)})'
    return None


# why a file is not an image, in the words of both checks (listing: unreadable_reason; reading: load_image)
_EMPTY, _NOT_IMAGE = 'empty file', 'not an image file (PIL does not recognise its contents)'
# what a complete file ends with, for the formats whose end is marked (a truncated copy lacks it)
_END_MARKERS = {'JPEG': (b'\xff\xd9', 64), 'PNG': (b'IEND\xaeB`\x82', 12)}


def unreadable_reason(path: str) -> Optional[str]:
    """Why an image file cannot be read, found cheaply (None: it looks readable): an empty file,
    contents PIL does not recognise, or a JPEG or PNG cut short. Reads the header and the last
    bytes; only a file whose end marker is not among them (cut short, or with data appended after
    the image, as some phones write) is decoded to tell which."""
    try:
        with open(path, 'rb') as f:
            if f.seek(0, 2) == 0:
                return _EMPTY
            f.seek(0)
            with Image.open(f) as image:
                fmt = image.format
                marker, tail = _END_MARKERS.get(fmt, (None, 0))
                if marker:
                    f.seek(max(0, f.seek(0, 2) - tail))
                    if marker not in f.read():
                        f.seek(0)
                        try:
                            Image.open(f).load()
                        except OSError:
                            return f'{fmt} file cut short: a partial download or copy'
    except UnidentifiedImageError:
        return _NOT_IMAGE
    except (OSError, SyntaxError, ValueError) as e:
        return f'{type(e).__name__}: {e}'
    return None


class ImageReadError(ValueError):
    """An image file that cannot be read: ``str()`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f'cannot read image {path}: {reason}')
        self.path, self.reason = str(path), reason


def load_image(path: str, min_size: Optional[int] = None) -> Image.Image:
    """Opens an image file (upright by its EXIF orientation); an ``ImageReadError`` when it is not a
    readable image.

    Args:
        path: The file.
        min_size: Decode a JPEG at a reduced scale (1/2, 1/4 or 1/8, PIL's ``draft``) as long as
            both sides keep at least this many pixels: a large photo costs a fraction of its full
            size in memory and time. None: full size. The mode stays the file's (CMYK, grayscale).
    """
    try:
        if Path(path).stat().st_size == 0:
            raise ImageReadError(path, _EMPTY)
        with open(path, 'rb') as f:
            image = Image.open(f)
            if min_size:
                image.draft(None, (min_size, min_size))  # a no-op for formats other than JPEG
            image.load()
        image = ImageOps.exif_transpose(image)  # photos taken sideways come out upright
    except UnidentifiedImageError:
        raise ImageReadError(path, _NOT_IMAGE) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(path, f'{type(e).__name__}: {e}') from None
    except ImageReadError:
        raise
    except ValueError as e:
        raise ImageReadError(path, f'{type(e).__name__}: {e}') from None
    return image


def _unreadable(paths: Sequence[str]) -> Dict[str, str]:
    """``{path: reason}`` for the files of ``paths`` that ``unreadable_reason`` finds unreadable
    (threads: the time is the file system's)."""
    with ThreadPoolExecutor(8) as pool:
        return {p: r for p, r in zip(paths, pool.map(unreadable_reason, paths)) if r}


def _folder(root: Path, skip_unreadable: bool = False) -> ImageFolder:
    if not root.is_dir():
        raise FileNotFoundError(f'image folder not found: {root}')
    skipped: List[str] = []

    def is_image(path: str) -> bool:
        if skip_reason(Path(path)) is None:
            return True
        skipped.append(path)
        return False

    try:
        dataset = ImageFolder(str(root), loader=load_image, is_valid_file=is_image, allow_empty=True)
    except FileNotFoundError as e:  # no class subfolders
        raise ValueError(f'{root} holds no images in the class-per-subfolder layout (root/<class>/<image>): '
                         f'{e}') from None
    if len(dataset.classes) < 2:
        raise ValueError(f'{root} has {len(dataset.classes)} class folder(s) ({", ".join(dataset.classes)}); '
                         f'classification needs at least 2')
    bad = _unreadable([path for path, _ in dataset.samples])
    if bad and not skip_unreadable:
        shown = '; '.join(f'{p}: {r}' for p, r in list(bad.items())[:3]) + (f'; and {len(bad) - 3} more'
                                                                            if len(bad) > 3 else '')
        raise ValueError(f'{len(bad)} image file(s) in {root} cannot be read: {shown}. Replace or remove them, '
                         f'or pass --skip-unreadable (Python: skip_unreadable=True) to leave them out')
    if bad:
        dataset.samples = [s for s in dataset.samples if s[0] not in bad]
        dataset.imgs, dataset.targets = dataset.samples, [t for _, t in dataset.samples]
        skipped += list(bad)
    counts = [0] * len(dataset.classes)
    for t in dataset.targets:
        counts[t] += 1
    empty = [c for c, n in zip(dataset.classes, counts) if n == 0]
    if empty:
        names = ', '.join(str(root / c) for c in empty)
        raise ValueError(f'class folder(s) {names} hold no {"readable " if bad else ""}images '
                         f'({sum(counts)} images in the other {len(dataset.classes) - len(empty)} classes): add '
                         f'images to them or remove them (each subfolder of {root} is a class)')
    dataset.skipped_files = skipped  # named at start-up by the commands (not silently dropped)
    dataset.unreadable_files = sorted(bad)
    return dataset


def split_indices(targets: Sequence[int], val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """A stratified split: ``val_fraction`` of every class (at least one image where the class has
    two or more) goes to validation, chosen by ``seed``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    rng = random.Random(seed)
    by_class = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, val = [], []
    for t in sorted(by_class):
        idx = by_class[t]
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _has_train_val(root: Path) -> bool:
    return (root / 'train').is_dir() and (root / 'val').is_dir()


def skipped_files(*datasets: Dataset) -> List[str]:
    """The files of the image folders behind ``datasets`` that were not read as images, sorted."""
    found = set()
    for ds in datasets:
        found.update(getattr(getattr(ds, 'dataset', ds), 'skipped_files', ()))
    return sorted(found)


def folder_classes(root: str) -> List[str]:
    """The class names ``image_folder(root)`` will have, from the folder names alone (no file scan)."""
    root = Path(root)
    root = root / 'train' if _has_train_val(root) else root
    if not root.is_dir():
        raise FileNotFoundError(f'image folder not found: {root}')
    return find_classes(str(root))[0]


def image_folder(
        root: str,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_transform: Optional[Callable] = None,
        val_transform: Optional[Callable] = None,
        skip_unreadable: bool = False,
) -> Tuple[Dataset, Dataset, List[str]]:
    """Training and validation sets from an image folder.

    ``root/train/<class>/...`` and ``root/val/<class>/...`` are used as they are when both exist;
    otherwise ``root/<class>/...`` is split, stratified, ``val_fraction`` for validation. Every
    image file is checked cheaply when the folder is listed (``unreadable_reason``): unreadable
    ones are an error naming them, or, with ``skip_unreadable``, left out and listed with the
    other skipped files (``skipped_files``). A class folder without images is an error naming it.

    Returns:
        The training set, the validation set and the class names.
    """
    root = Path(root)
    if _has_train_val(root):
        train, val = _folder(root / 'train', skip_unreadable), _folder(root / 'val', skip_unreadable)
        if train.classes != val.classes:
            raise ValueError(f'{root}/train and {root}/val have different class folders: '
                             f'{train.classes} vs {val.classes}')
        train.transform, val.transform = train_transform, val_transform
        return train, val, train.classes
    full = _folder(root, skip_unreadable)
    train_idx, val_idx = split_indices(full.targets, val_fraction, seed)
    if not val_idx:
        raise ValueError(f'{root} has too few images for a validation split (one per class at most)')
    val_set = copy.copy(full)  # shares the file list, has its own transform
    full.transform, val_set.transform = train_transform, val_transform
    return Subset(full, train_idx), Subset(val_set, val_idx), full.classes
