"""Prediction on image files: top-k classes with names, and per image what the model kept and spent.

The data side (``gather_images``) takes what users have: PNG/JPEG/WebP/BMP/GIF/TIFF files, a
folder of them, grayscale, RGBA (composited on white), any size (resized and cropped by the
model's data config). A missing or unreadable file becomes an error entry naming it; the other
images go on.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from .data import IMAGE_SUFFIXES, ImageReadError, load_image, model_norm, model_transform, skip_reason

__all__ = ['IMAGE_SUFFIXES', 'Prediction', 'class_names', 'gather_images', 'predict_images']



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
        input: The model's input image, de-normalised to [0, 1] ``[C, H, W]`` (for pictures).
    """
    source: str
    topk: List[Tuple[int, str, float]]
    kept: List[int]
    total: List[int]
    macs: int
    dense_macs: int
    stage_masks: List[List[bool]] = field(default_factory=list)
    grid: Optional[Tuple[int, int]] = None
    input: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.macs / self.dense_macs

    @property
    def is_cnn(self) -> bool:
        return self.grid is None

    def to_json(self) -> dict:
        """The prediction as JSON values: top-k, counts and MACs (not the masks or the input image)."""
        return dict(image=self.source, topk=[dict(index=i, label=n, prob=round(p, 6)) for i, n, p in self.topk],
                    kept=self.kept, out_of=self.total, macs=self.macs, dense_macs=self.dense_macs,
                    saved_fraction=round(self.saved_fraction, 6))


def gather_images(paths: Iterable[str]) -> Tuple[List[Tuple[str, Image.Image]], List[Tuple[str, str]],
                                                 List[Tuple[str, str]]]:
    """Loads image files and the images of folders (sorted, not recursive).

    Returns:
        ``[(path, image)]`` for what could be read, ``[(path, error message)]`` for what could not
        (missing or unreadable images), and ``[(path, reason)]`` for the files of a folder that
        are not images (other types, hidden files): every file is in one of the three.
    """
    images, errors, skipped = [], [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            try:
                files = []
                for f in sorted(f for f in path.iterdir() if f.is_file()):
                    reason = skip_reason(f)
                    if reason is None:
                        files.append(f)
                    else:
                        skipped.append((str(f), reason))
            except OSError as e:
                errors.append((str(path), f'cannot list the folder: {e.strerror or e}'))
                continue
            if not files:
                errors.append((str(path), f'no images ({", ".join(IMAGE_SUFFIXES)}) in the folder'))
        elif not path.exists():
            errors.append((str(path), 'no such file'))
            files = []
        else:
            files = [path]
        for f in files:
            try:
                images.append((str(f), load_image(str(f))))
            except ImageReadError as e:
                errors.append((str(f), e.reason))
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


@torch.no_grad()
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
    transform = model_transform(model)
    names = class_names(model)
    mean, std = (torch.tensor(v) for v in model_norm(model))
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device  # an ONNX Runtime model has none
    out: List[Prediction] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc='predict', unit='batch', disable=not progress or len(starts) < 2, file=sys.stderr):
        chunk = images[start:start + batch_size]
        x = torch.stack([transform(im) for _, im in chunk]).to(device)
        logits, aux = model(x, return_aux=True)
        probs = logits.float().softmax(-1)
        p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        macs, kept = aux.macs.tolist(), aux.kept.tolist()
        pixels = (x.cpu() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)
        masks = aux.kept_masks  # per stage [B, kept_of[s]]: the patches or channels each image kept
        for b, (source, _) in enumerate(chunk):
            out.append(Prediction(
                source=source,
                topk=[(int(i), names[int(i)], float(q)) for q, i in zip(p[b], idx[b])],
                kept=kept[b], total=list(aux.kept_of), macs=int(macs[b]), dense_macs=int(aux.dense_macs),
                stage_masks=[m[b].tolist() for m in masks], grid=aux.grid, input=pixels[b]))
    return out
