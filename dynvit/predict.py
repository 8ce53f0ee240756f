"""Prediction on image files: top-k classes with names, and per image what the model kept and spent.

The data side takes what users have: PNG/JPEG/WebP/BMP/GIF/TIFF files, a folder of them,
grayscale, RGBA (composited on white), 16-bit, CMYK, any size (resized and cropped by the model's
data config). A missing or unreadable file becomes an error entry naming it; the other images go on.

``predict_files`` streams: the files are listed first (``list_images``), then read one at a time
(large JPEGs decoded at a reduced scale) and predicted in batches, so memory does not grow with
the number or the size of the images. ``gather_images`` / ``predict_images`` hold them all.
"""
import sys
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .data import (
    IMAGE_SUFFIXES,
    ImageReadError,
    load_image,
    model_decode_size,
    model_norm,
    model_transform,
    skip_reason,
)

__all__ = ['IMAGE_SUFFIXES', 'Prediction', 'class_names', 'gather_images', 'iter_predictions', 'list_images',
           'predict_files', 'predict_images', 'read_images']

Problems = List[Tuple[str, str]]  # [(path, why)]


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        source: The image's file (or a label).
        topk: ``(class index, class name, probability)``, most probable first.
        kept: ViTs: patch tokens kept (fully updated) after each stage; CNNs: channels each
            gated layer kept.
        total: Patches (ViTs) or channels per gated layer (CNNs) ``kept`` is counted out of.
        macs: Multiply-accumulates the image cost; ``dense_macs`` without sparsification.
        stage_masks: Per stage (``kept``'s entries), which units the image kept: ViTs, the patches
            (row-major over ``grid``); CNNs, each gated layer's channels. Not in ``to_json``.
        grid: ViTs: the patch grid ``(rows, cols)``.
        fused_masks: Models that fuse the patches they do not keep into a token: per stage,
            the patches inside it (the others not in ``stage_masks`` were dropped); else empty.
            Not in ``to_json``.
        token_groups: Models that merge patches: per patch (row-major over ``grid``), the
            output token it ended in (equal values: one merged group); else None. In ``to_json``
            as ``token_groups`` (N small ints per image).
        picture: How pictures show what the image kept (the family's ``FamilySpec.picture``:
            'stages', 'groups' or 'channels').
        kept_patch: What a patch a stage kept is, in words (the family's, for legends; '': 'kept patch').
        not_kept: What a patch a stage did not keep became, in words (the family's, for legends).
        input: The model's input image, de-normalised to [0, 1] ``[C, H, W]`` (for pictures; it may
            be scaled down, or None when not kept: see ``iter_predictions``).
    """
    source: str
    topk: List[Tuple[int, str, float]]
    kept: List[int]
    total: List[int]
    macs: int
    dense_macs: int
    stage_masks: List[List[bool]] = field(default_factory=list)
    grid: Optional[Tuple[int, int]] = None
    fused_masks: List[List[bool]] = field(default_factory=list)
    token_groups: Optional[List[int]] = None
    picture: str = 'stages'
    kept_patch: str = ''
    not_kept: str = ''
    input: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.macs / self.dense_macs

    @property
    def is_cnn(self) -> bool:
        return self.grid is None

    @property
    def num_tokens(self) -> Optional[int]:
        """Merging models: the patch tokens left (``token_groups``' distinct values); else None."""
        return None if self.token_groups is None else len(set(self.token_groups))

    def to_json(self) -> dict:
        """The prediction as JSON values: top-k, counts and MACs, and a merging model's
        ``token_groups`` (not the masks or the input image)."""
        out = dict(image=self.source, topk=[dict(index=i, label=n, prob=round(p, 6)) for i, n, p in self.topk],
                   kept=self.kept, out_of=self.total, macs=self.macs, dense_macs=self.dense_macs,
                   saved_fraction=round(self.saved_fraction, 6))
        if self.token_groups is not None:
            out['token_groups'] = self.token_groups
        return out


def list_images(paths: Iterable[str], recursive: bool = False) -> Tuple[List[str], Problems, Problems]:
    """The image files of ``paths`` (files as given, the images of folders sorted), without reading them.

    Args:
        paths: Image files and folders.
        recursive: Also the images of the folders' subfolders (sorted by path; hidden subfolders are
            skipped). Without it, a folder with no images of its own whose subfolders hold some (a
            class-per-subfolder dataset) is an error that says so and counts them.

    Returns:
        The files to read (a folder's as the folder's path joined with the file's path in it), ``[(path,
        error message)]`` for the paths that give none (missing, an unlistable folder, a folder without
        images), and ``[(path, reason)]`` for the files of a folder that are not images (other types,
        hidden files, hidden subfolders): every file is in one of the three.
    """
    files, errors, skipped = [], [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = _folder_images(path, recursive, errors, skipped)
            if found is None:
                continue
            if not found:
                errors.append((str(path), _no_images_reason(path, recursive)))
            files += found
        elif not path.exists():
            errors.append((str(path), 'no such file'))
        else:
            files.append(str(path))
    return files, errors, skipped


def _folder_images(folder: Path, recursive: bool, errors: Problems, skipped: Problems,
                   seen: Optional[Set[Path]] = None) -> Optional[List[str]]:
    """The images of ``folder`` in name order (with ``recursive``, a subfolder's where its name sorts);
    its other files and hidden subfolders go to ``skipped``, a subfolder that cannot be listed to
    ``errors``. None when ``folder`` itself cannot be listed (named in ``errors``)."""
    seen = set() if seen is None else seen
    seen.add(folder.resolve())  # a link back to a folder being searched is not searched again
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        errors.append((str(folder), f'cannot list the folder: {e.strerror or e}'))
        return None
    found = []
    for entry in entries:
        if entry.is_file():
            reason = skip_reason(entry)
            if reason is None:
                found.append(str(entry))
            else:
                skipped.append((str(entry), reason))
        elif recursive and entry.is_dir():
            if entry.name.startswith('.'):
                skipped.append((str(entry), 'hidden folder (not searched)'))
            elif entry.resolve() not in seen:
                found += _folder_images(entry, recursive, errors, skipped, seen) or []
    return found


def _no_images_reason(folder: Path, recursive: bool) -> str:
    """Why a folder gave no images; without ``recursive``, how many its subfolders hold, if any."""
    below = 0 if recursive else len(_folder_images(folder, True, [], []) or [])
    if below:
        return f'no images in the folder, but its subfolders hold {below}: pass --recursive to search them'
    return f'no images ({", ".join(IMAGE_SUFFIXES)}) in the folder' + (' or its subfolders' if recursive else '')


def read_images(files: Iterable[str], min_size: Optional[int] = None,
                on_error: Optional[Callable[[str, str], None]] = None) -> Iterator[Tuple[str, Image.Image]]:
    """Reads image files one at a time: ``(path, image)`` for each readable one.

    Args:
        files: The files.
        min_size: Decode JPEGs at a reduced scale keeping at least this many pixels a side
            (``load_image``); None: full size.
        on_error: Called with ``(path, reason)`` for a file that cannot be read (else it raises
            the ``ImageReadError``).
    """
    for path in files:
        try:
            image = load_image(path, min_size)
        except ImageReadError as e:
            if on_error is None:
                raise
            on_error(path, e.reason)
            continue
        yield path, image
        del image  # not alive while the next one decodes


def gather_images(paths: Iterable[str], recursive: bool = False
                  ) -> Tuple[List[Tuple[str, Image.Image]], Problems, Problems]:
    """Loads image files and the images of folders (sorted; with ``recursive`` also those of their
    subfolders, see ``list_images``), all at full size.

    Returns:
        ``[(path, image)]`` for what could be read, ``[(path, error message)]`` for what could not
        (missing or unreadable images), and ``[(path, reason)]`` for the files of a folder that
        are not images (other types, hidden files): every file is in one of the three.
    """
    files, errors, skipped = list_images(paths, recursive)
    images = list(read_images(files, on_error=lambda path, reason: errors.append((path, reason))))
    return images, errors, skipped


def class_names(model: nn.Module) -> List[str]:
    """Class names from the model's pretrained cfg (``label_names``), ImageNet's for 1000 classes,
    else ``class 0``, ``class 1``, ..."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names and len(names) == model.num_classes:
        return list(names)
    if model.num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [f'class {i}' for i in range(model.num_classes)]


def predict_images(model: nn.Module, images: Sequence[Tuple[str, Image.Image]], topk: int = 5,
                   batch_size: int = 16, progress: bool = False) -> List[Prediction]:
    """Runs ``model`` (a dynvit model, as configured) on images.

    Args:
        model: The model, in eval mode.
        images: ``(source, PIL image)`` pairs, any size and mode.
        topk: Classes reported per image.
        batch_size: Images per forward.
        progress: Show a progress bar (tqdm, on stderr) when there is more than one batch.
    """
    return list(iter_predictions(model, images, topk, batch_size, progress, total=len(images)))


def predict_files(model: nn.Module, files: Sequence[str], topk: int = 5, batch_size: int = 16,
                  progress: bool = False, input_size: Optional[int] = None,
                  on_error: Optional[Callable[[str, str], None]] = None) -> Iterator[Prediction]:
    """Streams ``model``'s predictions on image files: each file is read when its batch comes
    (JPEGs decoded at the reduced scale the model's resize allows), so memory holds one decoded
    image and one batch, whatever the number or the size of the files.

    Args:
        model: The model, in eval mode.
        files: Image files (``list_images`` gives them for folders).
        topk: Classes reported per image.
        batch_size: Images per forward.
        progress: Show a progress bar (tqdm, on stderr) when there is more than one batch.
        input_size: ``Prediction.input`` at most this many pixels high (see ``iter_predictions``).
        on_error: Called with ``(path, reason)`` for a file that cannot be read; the others go on.
    """
    images = read_images(files, model_decode_size(model), on_error)
    return iter_predictions(model, images, topk, batch_size, progress, total=len(files), input_size=input_size)


@torch.no_grad()
def iter_predictions(model: nn.Module, images: Iterable[Tuple[str, Image.Image]], topk: int = 5,
                     batch_size: int = 16, progress: bool = False, total: Optional[int] = None,
                     input_size: Optional[int] = None) -> Iterator[Prediction]:
    """Runs ``model`` on images as they come, a batch at a time; yields each image's prediction
    after its batch. An image is turned into the model's input when it arrives and dropped.

    Args:
        model: The model, in eval mode.
        images: ``(source, PIL image)`` pairs, any size and mode (a generator reads them lazily).
        topk: Classes reported per image.
        batch_size: Images per forward.
        progress: Show a progress bar (tqdm, on stderr) when there is more than one batch.
        total: How many images ``images`` holds (for the progress bar).
        input_size: Keep ``Prediction.input`` (the model input, for pictures) at most this many
            pixels high, scaled down from the model's resolution; None: at the model's
            resolution; 0: not at all.
    """
    transform = model_transform(model)
    names = class_names(model)
    picture, not_kept = getattr(model, 'picture', 'stages'), getattr(model, 'not_kept', '')
    kept_patch = getattr(model, 'kept_patch', '')
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in model_norm(model))
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device  # an ONNX Runtime model has none
    pending = iter(images)
    with tqdm(total=total, desc='predict', unit='image', file=sys.stderr,
              disable=not progress or total is None or total <= batch_size) as bar:
        while True:
            sources, xs = [], []
            for source, image in islice(pending, batch_size):
                sources.append(source)
                xs.append(transform(image))  # [C, H, W]
                del image  # the decoded image goes before the next one is read
            if not sources:
                return
            x = torch.stack(xs).to(device)  # [B, C, H, W]
            del xs
            logits, aux = model(x, return_aux=True)
            probs = logits.float().softmax(-1)
            p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            macs, kept = aux.macs.tolist(), aux.kept.tolist()
            pixels = _picture_input(x.cpu(), mean, std, input_size)  # [B, C, h, w] in [0, 1], or None
            masks = aux.kept_masks  # per stage [B, kept_of[s]]: the patches or channels each image kept
            fused = aux.fused_masks or []  # per stage [B, N]: the patches inside a fused token
            groups = aux.token_groups  # [B, N] the token each patch ended in, or None
            bar.update(len(sources))
            for b, source in enumerate(sources):
                yield Prediction(
                    source=source,
                    topk=[(int(i), names[int(i)], float(q)) for q, i in zip(p[b], idx[b])],
                    kept=kept[b], total=list(aux.kept_of), macs=int(macs[b]), dense_macs=int(aux.dense_macs),
                    stage_masks=[m[b].tolist() for m in masks], grid=aux.grid,
                    fused_masks=[m[b].tolist() for m in fused],
                    token_groups=None if groups is None else groups[b].tolist(),
                    picture=picture, kept_patch=kept_patch, not_kept=not_kept,
                    input=None if pixels is None else pixels[b])


def _picture_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   height: Optional[int]) -> Optional[torch.Tensor]:
    """The model input ``x`` ``[B, C, H, W]`` de-normalised to [0, 1], scaled down to ``height``
    pixels when taller (None: as it is; 0: not kept)."""
    if height == 0:
        return None
    pixels = (x * std + mean).clamp(0, 1)
    h, w = pixels.shape[-2:]
    if height is not None and h > height:
        size = (height, max(1, round(w * height / h)))
        pixels = F.interpolate(pixels, size=size, mode='bilinear', antialias=True, align_corners=False).clamp(0, 1)
    return pixels
