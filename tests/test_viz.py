"""The prediction picture (``dynvit.viz``), checked on its pixels: the header fits, names in any
script stay readable, dropped patches stand out on any photo, and the FBS map shows each image's
own channels."""
import argparse
import dataclasses
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

import dynvit
from dynvit import viz
from dynvit.predict import predict_images
from helpers import run_cli

GREY = (128, 128, 128)


def _noise(seed, size=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _predict(name, images, **settings):
    model = dynvit.create_model(name, **settings).eval()
    return model, predict_images(model, images)


def _ink(image):
    """``[H, W]`` bool: the pixels that are not background."""
    return (np.asarray(image) != viz._BG).any(-1)


def _contains(big, small):
    """Whether the image ``small`` appears, pixel for pixel, somewhere in ``big``."""
    a, b = np.asarray(big), np.asarray(small)
    windows = np.lib.stride_tricks.sliding_window_view(a, b.shape)[..., 0, :, :, :]  # [H', W', h, w, 3]
    return bool((windows == b).all(axis=(-3, -2, -1)).any())


def _bands(rows):
    """The runs of True in a 1-d bool array, as ``(start, stop)``."""
    edges = np.diff(np.concatenate([[0], rows.astype(int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


def test_header_wraps_inside_the_picture_with_clean_numbers():
    from dynvit.cli.models import _title
    model, preds = _predict('test_dynamicvit', [('a.png', _noise(0)), ('b.png', _noise(1))], keep_ratio=0.65)
    assert model.level_text() == '0.65/0.4225/0.2746'  # 0.65 ** 2 = 0.42250000000000004
    title = _title(argparse.Namespace(model='dynamicvit_a_rather_long_model_name_patch16_224.some_tag'), model)
    assert 'keep_ratio 0.65/0.4225/0.2746' in title and '0000' not in title
    size = 48
    grid = viz.prediction_grid(preds, size=size, title=title)
    px = viz._text_px(size)
    header = viz._header(title, viz._legend(preds, px), grid.width, px)
    assert np.array_equal(np.asarray(grid)[:header.height], np.asarray(header))  # the grid's header
    text, font = viz._drawable(title, px + 1)
    assert font.getlength(title) > grid.width  # on one line it would run past the edge
    lines = viz._wrapped(text, font, grid.width - 2 * viz._GAP)
    assert len(lines) >= 2 and ''.join(lines).replace(' ', '') == title.replace(' ', '')  # wrapped, nothing lost
    ink = _ink(grid)
    assert not ink[:, -(viz._GAP - 1):].any()  # nothing drawn in the right margin
    assert len(_bands(_ink(header).any(1))) >= len(lines) + 1  # the title's lines, then the legend


def test_names_in_any_script_are_drawn_readably():
    assert viz._drawable('a\nb\xa0c\u200b\x07.png', 12)[0] == 'a b c??.png'  # spaces, invisible characters
    for name in ('Ünïcödé.jpg', 'café_猫.png'):
        text, font = viz._drawable(unicodedata.normalize('NFD', name), 12)  # macOS file names are decomposed
        assert all(viz._has_glyph(font, c) for c in text)  # no "missing glyph" boxes
        assert text == name or text == name.replace('猫', '?')  # 猫 in a CJK font when the system has one
    # a long name is shortened in the middle, the answer kept whole, nothing cut by the edge
    _, (pred,) = _predict('test_fbs_resnet', [('x.png', _noise(0))])
    pred = dataclasses.replace(pred, source='/photos/' + 'Ünïcödé_猫_' * 12 + 'end.jpg')
    row = viz.prediction_row(pred, size=32)
    assert not _ink(row)[:, -(viz._GAP - 1):].any()
    if viz._font_file() is None:
        pytest.skip('no DejaVu Sans on this machine (nor a substitute from fontconfig): text is drawn in '
                    'PIL\'s own font, accented letters as ?')
    font = viz._font(12)
    assert isinstance(font, ImageFont.FreeTypeFont)
    assert viz._drawable('Ünïcödé.jpg', 12) == ('Ünïcödé.jpg', font)
    missing = viz._glyph(font, viz._NO_CHAR)
    for accented, plain in zip('Üïöé', 'Uioe'):  # real glyphs: not the box, and not the plain letter
        assert viz._glyph(font, accented) not in (missing, viz._glyph(font, plain))


def test_dropped_patches_stand_out_on_a_grey_photo_and_the_legend_shows_them():
    _, (pred,) = _predict('test_dynamicvit', [('grey.png', Image.new('RGB', (32, 32), GREY))], keep_ratio=0.5)
    assert pred.grid == (8, 8) and [sum(m) for m in pred.stage_masks] == pred.kept == [32, 16, 8]
    size = 64
    row = np.asarray(viz.prediction_row(pred, size=size)).astype(int)
    top, cell = viz._title_band(size), size // 8

    def cell_pixels(panel, j):  # [cell, cell, 3]
        x, (r, c) = viz._GAP + panel * (size + viz._GAP), divmod(j, 8)
        return row[top + r * cell:top + (r + 1) * cell, x + c * cell:x + (c + 1) * cell]

    assert (cell_pixels(0, 0) == GREY).all()
    for s, keep in enumerate(pred.stage_masks, start=1):
        for j, kept in enumerate(keep):
            difference = np.abs(cell_pixels(s, j) - GREY).max(-1)  # [cell, cell] per pixel, largest channel
            assert (difference == 0).all() if kept else (difference >= 50).all()
    grid = viz.prediction_grid([pred], size=size)
    items = viz._legend([pred], viz._text_px(size))
    assert [t for _, t in items] == ['kept patch', 'patch dropped by the panel\'s stage']
    assert all(_contains(grid, swatch) for swatch, _ in items)


def test_kept_token_picture_marks_exactly_the_dropped_patches():
    """On a photo, the stage panels equal the input panel on kept patches and differ on dropped ones."""
    _, (pred,) = _predict('test_dynamicvit', [('x.png', _noise(0))], keep_ratio=0.5)  # 32 px, 8 x 8 patches
    size, gap, top = 64, viz._GAP, viz._title_band(64)
    row = np.asarray(viz.prediction_row(pred, size=size)).astype(int)
    assert row.shape[1] == 4 * size + 5 * gap  # input + 3 stages
    panel = lambda i: row[top:top + size, gap + i * (size + gap):gap + i * (size + gap) + size]  # noqa: E731
    cell = size // 8
    for s, keep in enumerate(pred.stage_masks, start=1):
        for j, kept in enumerate(keep):
            r, c = divmod(j, 8)
            a = panel(0)[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            b = panel(s)[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            assert (np.array_equal(a, b)) == kept


def test_channel_map_shows_each_images_own_channels():
    assert viz._channel_row([1, 1, 0, 0, 1, 0, 1, 0], 4).tolist() == [1, 0, 0.5, 0.5]  # squeezed: fraction kept
    assert viz._channel_row([1, 0], 4).tolist() == [1, 1, 0, 0]  # stretched
    _, preds = _predict('test_fbs_resnet', [('a.png', _noise(0)), ('b.png', _noise(1))], density=0.5)
    for p in preds:
        assert [len(m) for m in p.stage_masks] == p.total and [sum(m) for m in p.stage_masks] == p.kept
        assert 'stage_masks' not in p.to_json()
    assert preds[0].stage_masks != preds[1].stage_masks
    size = 48
    top, x0, layers = viz._title_band(size), 2 * viz._GAP + size, len(preds[0].total)
    width, height = 3 * size, max(size, 3 * layers)
    for p in preds:  # every channel's pixels in the colour of its decision
        image = np.asarray(viz.prediction_row(p, size=size))[top:top + height, x0:x0 + width]
        for layer, mask in enumerate(p.stage_masks):
            y = next(y for y in range(height) if y * layers // height == layer)
            for j, kept in enumerate(mask):
                x = next(x for x in range(width) if x * len(mask) // width == j)
                assert tuple(image[y, x]) == (viz._KEPT if kept else viz._SKIPPED)


def test_predict_draws_channel_maps_for_a_non_ascii_named_image(tmp_path):
    _noise(0).save(tmp_path / 'café_猫.png')
    _noise(1).save(tmp_path / 'plain.png')
    out, size = tmp_path / 'out.png', 48
    r = subprocess.run([sys.executable, '-m', 'dynvit', 'predict', 'test_fbs_resnet', str(tmp_path / 'café_猫.png'),
                        str(tmp_path / 'plain.png'), '--density', '0.5', '--viz', str(out), '--json',
                        '--size', str(size)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [p['image'] for p in json.loads(r.stdout)['predictions']] == [str(tmp_path / n)
                                                                         for n in ('café_猫.png', 'plain.png')]
    picture = np.asarray(Image.open(out).convert('RGB'))
    assert not _ink(picture)[:, -(viz._GAP - 1):].any()
    is_map = (picture == viz._KEPT).all(-1) | (picture == viz._SKIPPED).all(-1)  # [H, W]
    maps = [b for b in _bands(is_map.sum(1) >= size) if b[1] - b[0] > 1]  # the map's rows, layer by layer
    starts = [maps[0][0]] + [b[0] for a, b in zip(maps, maps[1:]) if b[0] - a[1] > 3]
    assert len(starts) == 2 and len(maps) == 2 * 8  # two images, 8 gated layers each
    columns = np.nonzero(is_map[starts[0]])[0]
    x0, x1 = columns.min(), columns.max() + 1
    assert x1 - x0 == 3 * size and is_map[maps[0][0]:maps[0][1], x0:x1].all()
    first, second = (picture[s:s + size, x0:x1] for s in starts)
    assert not np.array_equal(first, second)  # each image its own channels


def _cells(row, panel, size, grid=8):
    """``[grid * grid, cell, cell, 3]`` the cells of a row's panel ``panel`` (0: the input), square panels."""
    top, cell, x = viz._title_band(size), size // grid, viz._GAP + panel * (size + viz._GAP)
    image = row[top:top + size, x:x + size]
    return image.reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, cell, cell, 3)


def test_merged_tokens_fill_each_group_with_its_mean_colour_and_lines_part_them():
    _, (noise, grey) = _predict('test_tome', [('x.png', _noise(0)), ('grey.png', Image.new('RGB', (32, 32), GREY))],
                                r=8)  # 64 patches; 4 merging blocks leave 32 tokens
    groups = np.array(noise.token_groups)
    assert noise.grid == (8, 8) and groups.shape == (64,) and noise.num_tokens == len(set(groups)) == 32
    assert noise.to_json()['token_groups'] == noise.token_groups and not noise.fused_masks
    size = 64  # 8 pixels a patch
    assert viz._panels(noise, size)[1] == ['input', '32/64 tokens']  # input, then the tokens alone
    row = np.asarray(viz.prediction_row(noise, size=size)).astype(int)
    assert row.shape[1] == max(viz._row_min_width(viz._text_px(size)), 2 * size + 3 * viz._GAP)
    source, drawn = _cells(row, 0, size), _cells(row, 1, size)
    for g in set(groups):  # the centres of a group's patches: one colour, the mean of its input pixels
        mean = source[groups == g].reshape(-1, 3).mean(0)
        centres = drawn[groups == g][:, 1:-1, 1:-1].reshape(-1, 3)
        assert (centres == centres[0]).all() and np.abs(centres[0] - mean).max() <= 0.5 + 1e-6
    # on a uniform photo the groups are seen by their lines alone: exactly where two tokens meet
    row = np.asarray(viz.prediction_row(grey, size=size)).astype(int)
    panel = _cells(row, 1, size).reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
    pixel_group = np.array(grey.token_groups).reshape(8, 8).repeat(8, 0).repeat(8, 1)  # [64, 64]
    edge = np.zeros((size, size), bool)
    edge[:, :-1] |= pixel_group[:, 1:] != pixel_group[:, :-1]
    edge[:-1] |= pixel_group[1:] != pixel_group[:-1]
    assert edge.any() and ((panel != GREY).any(-1) == edge).all()
    assert (panel[edge] == viz._LINE_DARK).all()  # grey 128 counts as light: dark lines
    items = viz._legend([noise], viz._text_px(size))
    assert [t.split(':')[0] for _, t in items] == ['merged token', 'n/64 tokens']
    assert _contains(viz.prediction_grid([noise], size=size), items[0][0])


def test_fused_patches_are_tinted_apart_from_dropped_ones():
    photo = [('grey.png', Image.new('RGB', (32, 32), GREY))]
    size, fused_colour = 64, viz._fused_look(Image.new('RGB', (1, 1), GREY)).getpixel((0, 0))
    _, (pred,) = _predict('test_evit', photo, keep_ratio=0.5)
    assert [len(m) for m in pred.fused_masks] == [64, 64] and 'fused_masks' not in pred.to_json()
    assert pred.token_groups is None and 'token_groups' not in pred.to_json()
    row = np.asarray(viz.prediction_row(pred, size=size)).astype(int)
    for s, (keep, fused) in enumerate(zip(pred.stage_masks, pred.fused_masks), start=1):
        assert all(k != f for k, f in zip(keep, fused))  # fused: every patch not kept
        for cell, kept in zip(_cells(row, s, size), keep):
            assert (cell == (GREY if kept else fused_colour)).all()  # a flat tint: no hatching
    assert [t for _, t in viz._legend([pred], viz._text_px(size))] == [
        'kept patch', 'patch fused into one token by the panel\'s stage']
    # without fuse_token the patches not kept are dropped: the dropped look and legend
    _, (dropping,) = _predict('test_evit', photo, keep_ratio=0.5, fuse_token=False)
    assert not any(map(any, dropping.fused_masks))
    assert [t for _, t in viz._legend([dropping], viz._text_px(size))] == [
        'kept patch', 'patch dropped by the panel\'s stage']
    # both in one picture: three looks, three legend items, each swatch drawn
    half_fused = [[f and j % 2 == 0 for j, f in enumerate(m)] for m in pred.fused_masks]
    mixed = dataclasses.replace(pred, fused_masks=half_fused)
    row = np.asarray(viz.prediction_row(mixed, size=size)).astype(int)
    for keep, fused, cells in zip(mixed.stage_masks, mixed.fused_masks, (_cells(row, s, size) for s in (1, 2))):
        for cell, kept, fuse in zip(cells, keep, fused):
            if kept or fuse:
                assert (cell == (GREY if kept else fused_colour)).all()
            else:
                assert (np.abs(cell - GREY).max(-1) >= 50).all() and len(np.unique(cell.reshape(-1, 3), axis=0)) > 1
    items = viz._legend([mixed], viz._text_px(size))
    assert [t.split(' ')[1] for _, t in items[1:]] == ['fused', 'dropped'] and len(items) == 3
    grid = viz.prediction_grid([mixed], size=size)
    assert all(_contains(grid, swatch) for swatch, _ in items)


def test_a_family_that_drops_nothing_says_what_its_other_patches_got():
    """Evo-ViT gives the patches it does not select the cheap update, it drops none: its legend says
    so in its spec's words (viz asks no family), and both swatches are drawn."""
    from dynvit.families import spec_of
    evo = spec_of('Evo-ViT')
    assert 'cheap update' in evo.not_kept and 'not dropped' in evo.not_kept and evo.kept_patch != 'kept patch'
    _, (pred,) = _predict('test_evovit', [('x.png', _noise(0))], keep_ratio=0.5)
    assert (pred.kept_patch, pred.not_kept) == (evo.kept_patch, evo.not_kept)
    size = 64
    items = viz._legend([pred], viz._text_px(size))
    assert [t for _, t in items] == [evo.kept_patch, evo.not_kept]
    assert all(_contains(viz.prediction_grid([pred], size=size), swatch) for swatch, _ in items)


def test_titles_wrap_between_phrases_never_inside_a_setting():
    font = viz._font(11)
    title = 'tome_pico_patch4_28.fmnist_r8: r 8'
    room = font.getlength('tome_pico_patch4_28.fmnist_r8: r')  # 'r' would fit, its '8' not
    assert viz._wrapped(title, font, room) == ['tome_pico_patch4_28.fmnist_r8:', 'r 8']
    title = 'dynamicvit_pico_patch4_28.fmnist_kr05: keep_ratio 0.5/0.25/0.125, mode topk'
    room = font.getlength('dynamicvit_pico_patch4_28.fmnist_kr05: keep_ratio 0.5')
    assert viz._wrapped(title, font, room) == ['dynamicvit_pico_patch4_28.fmnist_kr05:',
                                               'keep_ratio 0.5/0.25/0.125, mode topk']
    # a phrase longer than a line still breaks after its spaces, nothing lost
    lines = viz._wrapped(title, font, font.getlength('keep_ratio 0.5/0.25'))
    assert 'mode topk' in lines and ' '.join(lines).replace(' ', '') == title.replace(' ', '')
    assert all(font.getlength(line) <= font.getlength('keep_ratio 0.5/0.25') for line in lines)


def test_a_long_file_name_wraps_whole_under_a_narrow_row():
    px, name = 10, 'fmnist_test0000_ankle_boot.png'
    font = viz._font(px)
    width = round(font.getlength(name + ': Ankle boot 0.91')) - 20  # too narrow for name and answer
    lines = viz._name_and_answer(name, 'Ankle boot 0.91', px, width)
    texts = [''.join(t for t, _ in line) for line in lines]
    assert texts[0].rstrip() == name + ':' and texts[-1].strip() == 'Ankle boot 0.91'  # not cut, not shortened
    assert all(sum(f.getlength(t) for t, f in line) <= width for line in lines)
    narrow = viz._name_and_answer(name, 'Ankle boot 0.91', px, round(font.getlength('fmnist_test0000_')) + 2)
    assert ''.join(t for t, _ in narrow[0]) + ''.join(t for t, _ in narrow[1]) == name + ':'  # split after its _
    # a name longer than two lines keeps its start and its extension
    long = viz._name_and_answer('x' * 200 + '.png', 'Bag 0.9', px, 100)
    assert len(long) == 3 and ''.join(t for t, _ in long[1]).endswith('.png:')


def test_the_demo_picture_is_a_grid_not_a_scroll(tmp_path):
    """Pictures tiled in rows come out about as wide as tall, each whole; so does the demo's (a
    section per zoo model: it was 546 x 4807 pixels stacked)."""
    pictures = [Image.new('RGB', (w, 450), (i, 0, 0)) for i, w in enumerate([366, 366, 546, 366, 366, 200, 200, 200,
                                                                            350, 350])]
    grid = viz.tiled(pictures)
    assert 2 / 3 <= grid.width / grid.height <= 3 / 2
    assert all(_contains(grid, p.crop((0, 0, 8, 8))) for p in pictures)  # every picture drawn
    assert viz.tiled(pictures[:1]).size == pictures[0].size
    samples = Path(dynvit.__file__).parent / 'samples'
    r = run_cli('demo', '--out', tmp_path / 'demo.png', '--threads', '1', '--images',
                *sorted(samples.glob('fmnist_test000[0-2]_*.png')))  # the three images it draws by default
    assert r.returncode == 0, r.stderr
    width, height = Image.open(tmp_path / 'demo.png').size
    assert 1 / 2 <= width / height <= 2 and height <= 2500


def test_same_named_images_in_class_folders_are_told_apart_in_pictures():
    from dynvit.viz import distinct_names
    assert distinct_names(['data/cat/0.jpg', 'data/dog/0.jpg', 'data/dog/1.jpg', 'x.png']) == \
        ['cat/0.jpg', 'dog/0.jpg', '1.jpg', 'x.png']
    assert distinct_names(['a/s/0.jpg', 'b/s/0.jpg']) == ['a/s/0.jpg', 'b/s/0.jpg']
    assert distinct_names(['0.jpg', 'cat/0.jpg']) == ['0.jpg', 'cat/0.jpg']  # a name cannot grow past its path
