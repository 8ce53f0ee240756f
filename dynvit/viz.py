"""Pictures of what a dynamic model kept, drawn with PIL (no plotting library needed).

Token-sparse ViTs: the model's input, then one panel per pruning stage with the patches dropped
by then greyed out, as in the DynamicViT paper's figure (arXiv:2106.02034, Fig. 5); for Evo-ViT
the greyed patches are those that only got the representative token's update. Channel-gated
CNNs (FBS): the input and one bar per gated layer showing the fraction of its channels kept.
"""
from typing import List, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .predict import Prediction

__all__ = ['prediction_row', 'prediction_grid']

_TEXT, _BG, _BAR, _BAR_BG = (20, 20, 20), (255, 255, 255), (46, 110, 180), (220, 220, 220)
_LINE = 13  # text line height of PIL's default font


def _to_pil(pixels: torch.Tensor, size: int) -> Image.Image:
    """``[C, H, W]`` in [0, 1] to an RGB image ``size`` pixels high (nearest for small inputs)."""
    a = (pixels.detach().float().clamp(0, 1) * 255).round().byte()
    a = a.expand(3, -1, -1) if a.shape[0] == 1 else a[:3]
    image = Image.fromarray(a.permute(1, 2, 0).contiguous().numpy(), 'RGB')
    w = max(1, round(image.width * size / image.height))
    return image.resize((w, size), Image.NEAREST if image.height < size else Image.BILINEAR)


def _greyed(pixels: torch.Tensor, keep: Sequence[bool], grid: Sequence[int]) -> torch.Tensor:
    """The input with the patches not in ``keep`` faded to light grey."""
    c, h, w = pixels.shape
    mask = torch.tensor(keep, dtype=torch.float32).view(1, 1, *grid)
    mask = torch.nn.functional.interpolate(mask, size=(h, w), mode='nearest')[0]
    faded = 0.3 * pixels + 0.7 * 0.55  # mid grey: visible on dark and on light images
    return mask * pixels + (1 - mask) * faded


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + '…'


def prediction_row(pred: Prediction, size: int = 112) -> Image.Image:
    """One image's picture: input, then kept tokens per stage (ViTs) or channels per layer (CNNs)."""
    font = ImageFont.load_default()
    panels, titles = [_to_pil(pred.input, size)], ['input']
    if not pred.is_cnn:
        for s, keep in enumerate(pred.stage_masks):
            panels.append(_to_pil(_greyed(pred.input, keep, pred.grid), size))
            titles.append(f'stage {s + 1}: {sum(keep)}/{len(keep)}')
    else:
        panels.append(_channel_bars(pred, 2 * size, size))
        titles.append(f'channels kept per gated layer ({len(pred.kept)})')
    gap, top, bottom = 6, _LINE + 4, 2 * _LINE + 6
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    row = Image.new('RGB', (width, top + size + bottom), _BG)
    draw = ImageDraw.Draw(row)
    x = gap
    for panel, title in zip(panels, titles):
        row.paste(panel, (x, top))
        draw.text((x, 2), _short(title, max(4, panel.width // 6)), fill=_TEXT, font=font)
        x += panel.width + gap
    _, label, prob = pred.topk[0]
    name = pred.source.replace('\\', '/').rsplit('/', 1)[-1]
    draw.text((gap, top + size + 3), _short(f'{name}: {label} {prob:.2f}', width // 6), fill=_TEXT, font=font)
    draw.text((gap, top + size + 3 + _LINE), f'{pred.macs / 1e6:.1f} MMACs, {pred.saved_fraction:.0%} saved',
              fill=_TEXT, font=font)
    return row


def _channel_bars(pred: Prediction, width: int, height: int) -> Image.Image:
    """One horizontal bar per gated layer: the fraction of its channels the image kept."""
    panel = Image.new('RGB', (width, height), _BG)
    draw = ImageDraw.Draw(panel)
    n = max(1, len(pred.kept))
    pitch = height / n
    for i, (k, c) in enumerate(zip(pred.kept, pred.total)):
        y0, y1 = round(i * pitch + 0.15 * pitch), max(round(i * pitch + 0.15 * pitch) + 1, round((i + 1) * pitch - 1))
        draw.rectangle((0, y0, width - 1, y1), fill=_BAR_BG)
        draw.rectangle((0, y0, max(0, round((width - 1) * k / c)), y1), fill=_BAR)
    return panel


def prediction_grid(preds: Sequence[Prediction], size: int = 112, title: str = '') -> Image.Image:
    """The rows of several images stacked (with an optional title line)."""
    if not preds:
        raise ValueError('no predictions to draw')
    rows: List[Image.Image] = [prediction_row(p, size) for p in preds]
    head = _LINE + 6 if title else 0
    grid = Image.new('RGB', (max(r.width for r in rows), head + sum(r.height for r in rows)), _BG)
    if title:
        ImageDraw.Draw(grid).text((6, 3), title, fill=_TEXT, font=ImageFont.load_default())
    y = head
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid
