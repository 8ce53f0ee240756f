"""Pictures of what a dynamic model kept, drawn with PIL (no plotting library needed).

What a picture shows is the family's (``FamilySpec.picture``, ``Prediction.picture``):

'stages': the model's input, then one panel per stage in which the patches that stage did not keep
are dimmed, tinted purple and hatched, so that they stand out on dark, light and grey photos alike
(as token-pruning papers draw them); the legend's words for both are the family's
(``Prediction.kept_patch``, ``Prediction.not_kept``: a family whose other patches get a cheap
update, not dropped, says so).
Models that fuse the patches they do not keep into one token (``Prediction.fused_masks``) show
those tinted orange without hatching, and the dropped ones as above.
'groups': models that merge patches (``Prediction.token_groups``) show, instead of stage panels, one
panel of the final tokens: each patch filled with the mean colour of the input pixels of the
patches merged with it, a thin line (dark on light tokens, light on dark ones) between
different tokens, as token-merging papers draw them.
'channels': channel-gated CNNs show the input and a map of the channels each gated layer kept for that image, one row per
gated layer (the first on top); a row's channels, whatever their number, are stretched or
squeezed to the map's width, so a pixel that covers several channels has the shade of the
fraction of them kept. Each grid starts with a header: the title, wrapped to the picture's width
between its phrases (a model's name, a setting such as 'r 8' stay whole), and a legend. Several
grids (the demo's, one per model) are tiled in rows into one picture about as wide as tall
(``tiled``).

Text is drawn in DejaVu Sans when the system has it (most Linux systems; see ``_font_file``), which
covers Latin, Greek, Cyrillic and many symbols; else in PIL's own font (ASCII only). A character
the font lacks is drawn in a system font that has all the characters of its label when
fontconfig finds one (e.g. a CJK font for ``café_猫.png``), else as ``?``; an image's file name too
long for its row wraps (after ``_ . -``) rather than being shortened, and a label too long for its
place is shortened with an ellipsis, never cut by the picture's edge.
"""
import functools
import math
import re
import subprocess
import unicodedata
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image, ImageDraw, ImageFont

from .predict import Prediction

__all__ = ['prediction_row', 'prediction_grid', 'tiled']

_TEXT, _BG = (20, 20, 20), (255, 255, 255)
_KEPT, _SKIPPED = (46, 110, 180), (222, 222, 222)  # channel map
_TINT, _HATCH, _TINT_WEIGHT, _HATCH_PITCH = (90, 20, 120), (215, 185, 230), 0.6, 6  # dropped patches
_FUSED, _FUSED_WEIGHT = (240, 120, 0), 0.6  # fused patches: an orange tint, no hatching
_LINE_DARK, _LINE_LIGHT = (25, 25, 25), (235, 235, 235)  # lines between merged tokens
_SWATCH_GREY = (128, 128, 128)
_RULE = (200, 200, 200)  # the lines between the pictures of ``tiled``
_GAP = 6  # pixels between and around panels
_FONT_FILE, _FONT_FAMILY = 'DejaVuSans.ttf', 'DejaVu Sans'
_NO_CHAR = '\uffff'  # a noncharacter: every font draws it with its "missing glyph" box
Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]
Swatch = Optional[Image.Image]  # a legend item's coloured square
Placed = Tuple[int, int, Swatch, List[str], Font]  # a legend item where it goes: x, y, swatch, lines, font


# ---- fonts and text ----
def _fontconfig(*args: str) -> str:
    """What a fontconfig command prints ('' where fontconfig is not installed or fails)."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''


@functools.lru_cache(maxsize=None)
def _font_file() -> Optional[str]:
    """The file of DejaVu Sans, or None.

    PIL looks for ``DejaVuSans.ttf`` in the platform's font folders (Linux: ``fonts/`` of the XDG
    data dirs, e.g. /usr/share/fonts/truetype/dejavu/; macOS: /Library/Fonts and
    /System/Library/Fonts; Windows: %WINDIR%/Fonts); then fontconfig is asked (``fc-match``), which
    names DejaVu Sans or, without it, the system's usual substitute for it.
    """
    return _loadable(_FONT_FILE) or _loadable(_fontconfig('fc-match', '-f', '%{file}', _FONT_FAMILY))


def _loadable(name: str) -> Optional[str]:
    """The path of the font file ``name`` (a path, or a file name PIL finds), if PIL can load it."""
    try:
        return ImageFont.truetype(name, 10).path if name else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _font(px: int, path: Optional[str] = None) -> Font:
    """A font ``px`` pixels high: the file ``path`` (default: DejaVu Sans, ``_font_file``), else PIL's
    own (scalable in Pillow >= 10.1, a fixed bitmap font before)."""
    path = path or _font_file()
    if path:
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _glyph(font: Font, char: str) -> Tuple[Tuple[int, int], bytes]:
    mask = font.getmask(char, mode='L')
    return mask.size, bytes(mask)


@functools.lru_cache(maxsize=4096)
def _has_glyph(font: Font, char: str) -> bool:
    """Whether ``font`` draws ``char`` as itself (not as its "missing glyph" box)."""
    if not isinstance(font, ImageFont.FreeTypeFont):  # PIL's bitmap font: Latin-1
        return ord(char) < 256
    return _glyph(font, char) != _glyph(font, _NO_CHAR)


@functools.lru_cache(maxsize=256)
def _covering_font_file(chars: str) -> Optional[str]:
    """A system font file (fontconfig's best sans-serif match) that has all of ``chars``, or None."""
    charset = ' '.join(f'{ord(c):x}' for c in chars)
    path = _loadable(_fontconfig('fc-match', '-f', '%{file}', f'sans-serif:charset={charset}'))
    if not path or path == _font_file():
        return None
    return path if all(_has_glyph(_font(10, path), c) for c in chars) else None


def _visible(char: str) -> str:
    """``char``, a space for other spaces (no-break, tab, newline), ``?`` for other invisible characters."""
    if char.isprintable():
        return char
    return ' ' if char.isspace() else '?'


def _drawable(text: str, px: int) -> Tuple[str, Font]:
    """``text`` as it will be drawn and the font to draw it in, ``px`` pixels high.

    The text is NFC-normalised (macOS writes file names decomposed) and its invisible characters
    made visible (``_visible``). When the picture's font (``_font``) lacks some of its characters,
    the whole text is drawn in a system font that has them all (``_covering_font_file``), else
    they become ``?``.
    """
    text = ''.join(_visible(c) for c in unicodedata.normalize('NFC', text))
    font = _font(px)
    missing = ''.join(sorted({c for c in text if not _has_glyph(font, c)}))
    if not missing:
        return text, font
    path = _covering_font_file(missing)
    if path and all(_has_glyph(_font(px, path), c) for c in set(text)):
        return text, _font(px, path)
    return ''.join('?' if c in missing else c for c in text), font


def _ellipsis(font: Font) -> str:
    return '…' if _has_glyph(font, '…') else '...'


def _longest(fits: Callable[[int], bool], most: int) -> int:
    """The largest ``n`` in ``[0, most]`` with ``fits(n)`` (``fits`` true up to some ``n``, then false)."""
    lo, hi = 0, most
    while lo < hi:
        n = (lo + hi + 1) // 2
        lo, hi = (n, hi) if fits(n) else (lo, n - 1)
    return lo


def _shortened(text: str, font: Font, width: int, middle: bool = False) -> str:
    """``text``, or as much of it as fits ``width`` pixels with an ellipsis at the end (``middle``:
    in the middle, keeping a file name's start and its extension)."""
    if font.getlength(text) <= width:
        return text
    dots = _ellipsis(font)

    def cut(n: int) -> str:  # the text with n of its characters kept
        head = (n + 1) // 2 if middle else n
        return text[:head] + dots + text[len(text) - (n - head):]

    return cut(_longest(lambda n: font.getlength(cut(n)) <= width, len(text) - 1))


def _phrases(text: str) -> List[str]:
    """``text`` cut after each ``:``, ``;`` or ``,`` followed by a space (the space kept with the phrase
    before it): 'model.tag: r 8, mode topk' -> ['model.tag: ', 'r 8, ', 'mode topk']."""
    return re.findall(r'\s*\S.*?(?:[:;,]\s+|$)', text)


def _wrapped(text: str, font: Font, width: int) -> List[str]:
    """``text`` in lines no wider than ``width`` pixels. A phrase (``_phrases``: a model's name, a
    setting such as 'r 8' or 'keep_ratio 0.5/0.25') that fits a line is never broken: it starts the
    next line when this one has no room for it. A longer phrase is broken after spaces; a word wider
    than a line (a long model name) is split after its last ``_ . - /`` that fits, else where it must be."""
    def fits(s: str) -> bool:
        return font.getlength(s.rstrip()) <= width

    lines, line = [], ''
    for phrase in _phrases(text):
        if fits(line + phrase):
            line += phrase
            continue
        if line.strip() and fits(phrase.lstrip()):
            lines.append(line.rstrip())
            line = phrase.lstrip()
            continue
        for word in re.findall(r'\S+\s*', phrase):  # longer than a line: its words flow on from this one
            if line.strip() and not fits(line + word):
                lines.append(line.rstrip())
                line = ''
            while len(word) > 1 and not fits(word):
                n = max(1, _longest(lambda n: font.getlength(word[:n]) <= width, len(word)))
                n = max(word.rfind(c, 0, n) for c in '_.-/') + 1 or n
                lines.append(word[:n])
                word = word[n:]
            line = (line + word).lstrip()
    return lines + ([line.rstrip()] if line.strip() else [])


def _name_and_answer(name: str, answer: str, px: int, width: int) -> List[List[Tuple[str, Font]]]:
    """An image's file ``name`` and the model's ``answer`` ('Ankle boot 0.91') in lines of ``width``
    pixels, each line a list of ``(text, font)``: 'name: answer' when it fits a line; else the name
    wrapped (after spaces, else after its ``_ . - /``: never cut short) with the answer after it
    or on the next line. A name longer than two lines keeps its first line whole and its end (the
    extension) after an ellipsis on the second; the answer is shortened only when it is wider
    than a line itself."""
    name, name_font = _drawable(name + ':', px)
    answer, answer_font = _drawable(answer, px)
    space = name_font.getlength(' ')
    if name_font.getlength(name) + space + answer_font.getlength(answer) <= width:
        return [[(name + ' ', name_font), (answer, answer_font)]]
    lines = _wrapped(name, name_font, width)
    if len(lines) > 2:  # the first line is where the name starts
        lines = lines[:1] + [_shortened(name[len(lines[0]):].lstrip(), name_font, width, middle=True)]
    out = [[(text, name_font)] for text in lines]
    if name_font.getlength(lines[-1]) + space + answer_font.getlength(answer) <= width:
        out[-1] = [(lines[-1] + ' ', name_font), (answer, answer_font)]
    else:
        out.append([(_shortened(answer, answer_font, width), answer_font)])
    return out


def _draw_segments(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], segments: Sequence[Tuple[str, Font]]) -> None:
    """Draws the ``(text, font)`` of one line one after the other from ``xy``."""
    x, y = xy
    for text, font in segments:
        draw.text((x, y), text, fill=_TEXT, font=font)
        x += round(font.getlength(text))


def _text_px(size: int) -> int:
    """The text height for panels ``size`` pixels high."""
    return max(10, min(15, round(size * 0.12)))


def _line_px(px: int) -> int:
    """The height of a line of text ``px`` pixels high."""
    return round(px * 1.35)


def _title_band(size: int) -> int:
    """The height of the panel titles above the panels of ``prediction_row``."""
    return _line_px(_text_px(size)) + 2


def _label(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], text: str, px: int, width: int) -> None:
    """Draws one line of text at ``xy``, shortened to ``width`` pixels."""
    text, font = _drawable(text, px)
    draw.text(xy, _shortened(text, font, width), fill=_TEXT, font=font)


# ---- panels ----
def _to_pil(pixels: torch.Tensor, size: int) -> Image.Image:
    """``[C, H, W]`` in [0, 1] to an RGB image ``size`` pixels high (nearest for small inputs)."""
    a = (pixels.detach().float().clamp(0, 1) * 255).round().byte()
    a = a.expand(3, -1, -1) if a.shape[0] == 1 else a[:3]
    image = Image.fromarray(a.permute(1, 2, 0).contiguous().numpy(), 'RGB')
    w = max(1, round(image.width * size / image.height))
    return image.resize((w, size), Image.NEAREST if image.height < size else Image.BILINEAR)


def _dropped_look(image: Image.Image) -> Image.Image:
    """``image`` dimmed and tinted purple, with light diagonal hatching: how a dropped patch looks."""
    out = Image.blend(image, Image.new('RGB', image.size, _TINT), _TINT_WEIGHT)
    draw = ImageDraw.Draw(out)
    w, h = image.size
    for x in range(-h, w, _HATCH_PITCH):
        draw.line((x, h - 1, x + h - 1, 0), fill=_HATCH)
    return out


def _fused_look(image: Image.Image) -> Image.Image:
    """``image`` tinted orange, without hatching: how a patch fused into one token looks."""
    return Image.blend(image, Image.new('RGB', image.size, _FUSED), _FUSED_WEIGHT)


def _patch_mask(flags: Sequence[bool], grid: Tuple[int, int], size: Tuple[int, int]) -> Image.Image:
    """An 'L' mask of ``size`` pixels, 255 over the patches (row-major over ``grid``) in ``flags``."""
    mask = Image.new('L', (grid[1], grid[0]))
    mask.putdata([255 if f else 0 for f in flags])
    return mask.resize(size, Image.NEAREST)


def _stage_panel(image: Image.Image, keep: Sequence[bool], grid: Tuple[int, int],
                 fused: Sequence[bool] = ()) -> Image.Image:
    """The input panel with the patches in ``fused`` marked fused and the others not in ``keep``
    (row-major over ``grid``) marked dropped."""
    marked = _dropped_look(image)
    if any(fused):
        marked = Image.composite(_fused_look(image), marked, _patch_mask(fused, grid, image.size))
    return Image.composite(image, marked, _patch_mask(keep, grid, image.size))


def _pixel_patches(grid: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """``[height, width]`` the patch (row-major over ``grid``) under each pixel of a panel."""
    rows = torch.arange(height) * grid[0] // height  # [H]
    cols = torch.arange(width) * grid[1] // width  # [W]
    return rows[:, None] * grid[1] + cols[None, :]


def _groups_panel(image: Image.Image, groups: Sequence[int], grid: Tuple[int, int]) -> Image.Image:
    """The input panel with each patch filled with the mean colour of the pixels of its group
    (the patches with its value in ``groups``, row-major over ``grid``), and a one-pixel line,
    dark on light groups and light on dark ones, where a pixel's right or lower neighbour is of
    another group."""
    w, h = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h * w, 3).float()  # [HW, 3]
    _, group = torch.unique(torch.tensor(groups), return_inverse=True)  # [N] groups numbered 0..G-1
    group = group[_pixel_patches(grid, h, w)]  # [H, W] the group of each pixel
    flat = group.flatten()  # [HW]
    sums = torch.zeros(int(flat.max()) + 1, 3).index_add_(0, flat, pixels)  # [G, 3]
    mean = sums / torch.bincount(flat, minlength=len(sums)).clamp_min(1)[:, None]  # [G, 3]
    rgb = mean.round()[group]  # [H, W, 3]
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[:, :-1] |= group[:, 1:] != group[:, :-1]
    edge[:-1] |= group[1:] != group[:-1]
    light = (mean @ torch.tensor([0.299, 0.587, 0.114]) > 127.5)[group]  # [H, W]
    rgb[edge & light] = torch.tensor(_LINE_DARK, dtype=torch.float32)
    rgb[edge & ~light] = torch.tensor(_LINE_LIGHT, dtype=torch.float32)
    return Image.fromarray(rgb.byte().numpy(), 'RGB')


def _channel_row(mask: Sequence[bool], width: int) -> torch.Tensor:
    """``[width]`` the fraction of channels kept under each pixel, the channels spread over the width."""
    m = torch.tensor(mask, dtype=torch.float32)  # [C]
    if len(m) >= width:
        return torch.nn.functional.adaptive_avg_pool1d(m.view(1, 1, -1), width).view(width)
    return m[torch.arange(width) * len(m) // width]


def _channel_map(masks: Sequence[Sequence[bool]], width: int, height: int) -> Image.Image:
    """A row per gated layer (first on top) of the channels it kept (``_KEPT``) and skipped
    (``_SKIPPED``), each layer's channels stretched or squeezed to ``width``; a white line between
    rows of 3 or more pixels."""
    frac = torch.stack([_channel_row(m, width) for m in masks])  # [L, W]
    layer = torch.arange(height) * len(masks) // height  # [H] the layer each pixel row shows
    rows = frac[layer]  # [H, W]
    kept, skipped = torch.tensor(_KEPT, dtype=torch.float32), torch.tensor(_SKIPPED, dtype=torch.float32)
    rgb = skipped + rows[..., None] * (kept - skipped)  # [H, W, 3]
    if height >= 3 * len(masks):
        last = torch.cat([layer[1:] != layer[:-1], torch.tensor([False])])  # [H] a layer's last pixel row
        rgb[last] = torch.tensor(_BG, dtype=torch.float32)
    return Image.fromarray(rgb.round().byte().numpy(), 'RGB')


def _panels(pred: Prediction, size: int) -> Tuple[List[Image.Image], List[str]]:
    """The panels of one image and their titles."""
    image = _to_pil(pred.input, size)
    panels, titles = [image], ['input']
    if pred.picture == 'channels':
        if not pred.stage_masks:
            raise ValueError(f'{pred.source}: the prediction has no channel masks to draw')
        panels.append(_channel_map(pred.stage_masks, 3 * size, max(size, 3 * len(pred.stage_masks))))
        titles.append(f'{sum(pred.kept)}/{sum(pred.total)} channels kept')
    elif pred.picture == 'groups':
        if pred.token_groups is None:
            raise ValueError(f'{pred.source}: the prediction has no token groups to draw')
        panels.append(_groups_panel(image, pred.token_groups, pred.grid))
        titles.append(f'{pred.num_tokens}/{len(pred.token_groups)} tokens')
    else:
        fused = pred.fused_masks or [()] * len(pred.stage_masks)
        for s, (keep, fuse) in enumerate(zip(pred.stage_masks, fused), start=1):
            panels.append(_stage_panel(image, keep, pred.grid, fuse))
            titles.append(f'stage {s}: {sum(keep)}/{len(keep)}')
    return panels, titles


def _row_min_width(px: int) -> int:
    """The narrowest row or header: room for about 25 characters."""
    return 20 * px


def distinct_names(sources: Sequence[str]) -> List[str]:
    """Each path's file name, with as many of its folders in front as it takes to tell it from the
    others ('cat/0.jpg' and 'dog/0.jpg', not '0.jpg' twice)."""
    parts = [s.replace('\\', '/').split('/') for s in sources]
    depth = [1] * len(parts)
    while True:
        names = ['/'.join(p[-d:]) for p, d in zip(parts, depth)]
        seen: Dict[str, int] = {}
        for n in names:
            seen[n] = seen.get(n, 0) + 1
        grow = [i for i, n in enumerate(names) if seen[n] > 1 and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def prediction_row(pred: Prediction, size: int = 112, name: Optional[str] = None) -> Image.Image:
    """One image's picture: input, then the patches kept per stage (ViTs) or the channel map (CNNs),
    each panel titled; below, the file name with the top class and its probability (on more lines
    when the row is narrow: ``_name_and_answer``), and the MACs.

    Args:
        pred: The image's prediction (``dynvit.predict.predict_images``; CNNs need its channel masks).
        size: Panel height in pixels (a channel map gets at least 3 pixels per gated layer).
        name: The image's name under it (default: its file name).
    """
    panels, titles = _panels(pred, size)
    px = _text_px(size)
    line = _line_px(px)
    top, height = _title_band(size), max(p.height for p in panels)
    width = max(_row_min_width(px), sum(p.width for p in panels) + _GAP * (len(panels) + 1))
    _, label, prob = pred.topk[0]
    name = name or distinct_names([pred.source])[0]
    named = _name_and_answer(name, f'{label} {prob:.2f}', px, width - 2 * _GAP)
    row = Image.new('RGB', (width, top + height + (len(named) + 1) * line + 6), _BG)
    draw = ImageDraw.Draw(row)
    x = _GAP
    for panel, title in zip(panels, titles):
        row.paste(panel, (x, top))
        _label(draw, (x, 1), title, px, panel.width)
        x += panel.width + _GAP
    y = top + height + 3
    for i, segments in enumerate(named):
        _draw_segments(draw, (_GAP, y + i * line), segments)
    _label(draw, (_GAP, y + len(named) * line), f'{pred.macs / 1e6:.1f} MMACs, {pred.saved_fraction:.0%} saved', px,
           width - 2 * _GAP)
    return row


# ---- header and grid ----
def _legend(preds: Sequence[Prediction], px: int) -> List[Tuple[Swatch, str]]:
    """The legend's items, ``(swatch or None, text)``, for the kinds of pictures in ``preds``."""
    box, items = max(8, px - 2), []
    grey = Image.new('RGB', (box, box), _SWATCH_GREY)
    staged = [p for p in preds if p.picture == 'stages']
    if staged:
        for words in dict.fromkeys(p.kept_patch or 'kept patch' for p in staged):
            items.append((grey, words))
        if any(p.fused_masks and any(map(any, p.fused_masks)) for p in staged):
            items.append((_fused_look(grey), 'patch fused into one token by the panel\'s stage'))
        for words in dict.fromkeys(p.not_kept or "patch dropped by the panel's stage" for p in staged if _drops(p)):
            items.append((_dropped_look(grey), words))
    merged = [p for p in preds if p.picture == 'groups']
    if merged:
        patches = _span([len(p.token_groups) for p in merged])
        items += [(_groups_swatch(box), 'merged token: its patches in their mean colour, a line between tokens'),
                  (None, f'n/{patches} tokens: the tokens left of {patches} patches')]
    cnn = [p for p in preds if p.picture == 'channels']
    if cnn:
        span = _span([c for p in cnn for c in p.total])
        items += [(Image.new('RGB', (box, box), _KEPT), 'kept channel'),
                  (Image.new('RGB', (box, box), _SKIPPED), 'skipped channel'),
                  (None, f'map: a row per gated layer ({max(len(p.total) for p in cnn)}, the first on top), its {span} '
                         f'channels spread over the width, a pixel shaded by the fraction of them kept')]
    return items


def _span(counts: Sequence[int]) -> str:
    """``counts`` as '12' when all equal, else '8-12'."""
    return f'{min(counts)}' if min(counts) == max(counts) else f'{min(counts)}-{max(counts)}'


def _drops(pred: Prediction) -> bool:
    """Whether a stage panel of ``pred`` marks dropped patches: a model that fuses nothing (every
    patch it does not keep counts as dropped) or a stage that neither kept nor fused a patch."""
    if not pred.fused_masks:
        return True
    return any(not (k or f) for keep, fused in zip(pred.stage_masks, pred.fused_masks) for k, f in zip(keep, fused))


def _groups_swatch(box: int) -> Image.Image:
    """A legend square of two merged tokens: two colours with the line between them."""
    left, right = (200, 150, 90), (90, 130, 180)
    swatch = Image.new('RGB', (box, box), left)
    swatch.paste(right, (box // 2, 0, box, box))
    ImageDraw.Draw(swatch).line((box // 2 - 1, 0, box // 2 - 1, box - 1), fill=_LINE_DARK)
    return swatch


def _legend_layout(items: Sequence[Tuple[Swatch, str]], width: int, px: int) -> Tuple[List[Placed], int]:
    """Where each legend item goes, ``(x, y, swatch, text lines, font)``, the items flowing left to
    right and on to the next line (an item longer than a line wrapped), and the legend's height."""
    line, right = _line_px(px), width - _GAP
    x, y, placed = _GAP, 0, []
    for swatch, text in items:
        text, font = _drawable(text, px)
        indent = swatch.width + 4 if swatch else 0
        needed = indent + round(font.getlength(text))
        if x > _GAP and x + needed > right:
            x, y = _GAP, y + line
        lines = [text] if x + needed <= right else _wrapped(text, font, right - x - indent)
        placed.append((x, y, swatch, lines, font))
        if len(lines) > 1:
            x, y = _GAP, y + line * len(lines)
        else:
            x += needed + 2 * px
    return placed, y + (line if x > _GAP else 0)


def _header(title: str, items: Sequence[Tuple[Swatch, str]], width: int, px: int) -> Image.Image:
    """The title (one pixel larger than the labels, wrapped to ``width``) over the legend."""
    text, font = _drawable(title, px + 1)
    lines = _wrapped(text, font, width - 2 * _GAP) if title else []
    title_line, line = _line_px(px + 1), _line_px(px)
    placed, legend_height = _legend_layout(items, width, px)
    pad = line // 2  # apart from what is above (the demo stacks grids)
    top = pad + len(lines) * title_line
    header = Image.new('RGB', (width, top + legend_height + 4), _BG)
    draw = ImageDraw.Draw(header)
    for i, text in enumerate(lines):
        draw.text((_GAP, pad + i * title_line), text, fill=_TEXT, font=font)
    for x, y, swatch, item_lines, item_font in placed:
        indent = 0
        if swatch:
            header.paste(swatch, (x, top + y + (line - swatch.height) // 2))
            indent = swatch.width + 4
        for i, text in enumerate(item_lines):
            draw.text((x + indent, top + y + i * line), text, fill=_TEXT, font=item_font)
    return header


def prediction_grid(preds: Sequence[Prediction], size: int = 112, title: str = '') -> Image.Image:
    """The rows of several images (``prediction_row``) stacked under a header: ``title`` (wrapped to
    the picture's width; may be empty) and a legend of the marks.

    Args:
        preds: The images' predictions (``dynvit.predict.predict_images``).
        size: Panel height in pixels (the text is sized after it).
        title: The header's first line(s), e.g. the model and its settings.
    """
    if not preds:
        raise ValueError('no predictions to draw')
    rows = [prediction_row(p, size, name) for p, name in zip(preds, distinct_names([p.source for p in preds]))]
    px = _text_px(size)
    width = max(r.width for r in rows)
    header = _header(title, _legend(preds, px), width, px)
    grid = Image.new('RGB', (width, header.height + sum(r.height for r in rows)), _BG)
    grid.paste(header, (0, 0))
    y = header.height
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def _balanced_rows(widths: Sequence[int], count: int, gap: int) -> List[List[int]]:
    """The indices of ``widths`` in order, cut into ``count`` rows (``gap`` pixels between two in a
    row) so that the widest row is as narrow as it can be."""
    n = len(widths)

    def span(i: int, j: int) -> int:  # the width of a row of pictures i..j-1
        return sum(widths[i:j]) + gap * (j - i - 1)

    # best[k][j]: (the widest row, the row starts) of the first j pictures in k rows
    best = [[(math.inf, [])] * (n + 1) for _ in range(count + 1)]
    best[0][0] = (0, [])
    for k in range(1, count + 1):
        for j in range(k, n + 1):
            best[k][j] = min(((max(best[k - 1][i][0], span(i, j)), best[k - 1][i][1] + [i])
                              for i in range(k - 1, j)), key=lambda b: b[0])
    starts = best[count][n][1] + [n]
    return [list(range(a, b)) for a, b in zip(starts, starts[1:])]


def tiled(pictures: Sequence[Image.Image], aspect: float = 1.0, gap: int = 4 * _GAP) -> Image.Image:
    """``pictures`` (e.g. one ``prediction_grid`` per model) in rows, in their order left to right and
    top to bottom, in as many rows as brings the whole nearest to ``aspect`` (width / height: 1 is
    square), the rows as even in width as the order allows; a thin grey line parts neighbours.

    Args:
        pictures: The pictures, each drawn whole, at its own size.
        aspect: The wanted width over height of the result.
        gap: Pixels between two pictures (the line in its middle).
    """
    if not pictures:
        raise ValueError('no pictures to tile')
    widths, heights = [p.width for p in pictures], [p.height for p in pictures]

    def layout(count: int) -> Tuple[List[List[int]], int, int]:
        rows = _balanced_rows(widths, count, gap)
        width = max(sum(widths[i] for i in r) + gap * (len(r) - 1) for r in rows)
        height = sum(max(heights[i] for i in r) for r in rows) + gap * (len(rows) - 1)
        return rows, width, height

    layouts = [layout(count) for count in range(1, len(pictures) + 1)]
    rows, width, height = min(layouts, key=lambda lay: abs(math.log(lay[1] / lay[2] / aspect)))
    out = Image.new('RGB', (width, height), _BG)
    draw = ImageDraw.Draw(out)
    y = 0
    for n, r in enumerate(rows):
        row_height = max(heights[i] for i in r)
        if n:
            draw.line((0, y - gap // 2 - 1, width - 1, y - gap // 2 - 1), fill=_RULE)
        x = 0
        for k, i in enumerate(r):
            if k:
                draw.line((x - gap // 2 - 1, y, x - gap // 2 - 1, y + row_height - 1), fill=_RULE)
            out.paste(pictures[i], (x, y))
            x += widths[i] + gap
        y += row_height + gap
    return out
