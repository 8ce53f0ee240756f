"""Datasets: Fashion-MNIST IDX files, image folders, preprocessing for 1- or 3-channel models,
and clear errors for bad data."""
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

import dynvit
from dynvit.data import FashionMNIST, SeededAugmentation, build_datasets, image_folder, model_transform, read_idx

from helpers import run_cli


def write_idx(path, array, gz=True):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.tobytes()
    with (gzip.open if gz else open)(path, 'wb') as f:
        f.write(data)


def make_fashion(root, n=12, gz=True, labels=None):
    rng = np.random.default_rng(0)
    for split in ('train', 't10k'):
        write_idx(root / f'{split}-images-idx3-ubyte{".gz" if gz else ""}',
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        lab = np.arange(n, dtype=np.uint8) % 10 if labels is None else np.asarray(labels, dtype=np.uint8)
        write_idx(root / f'{split}-labels-idx1-ubyte{".gz" if gz else ""}', lab, gz)
    return root


def make_folder(root, classes=3, per_class=6, mode='RGB', size=20):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f'class{c}').mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == 'RGB' else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f'class{c}' / f'{i}.png')
    return root


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    make_fashion(tmp_path, gz=gz)
    ds = FashionMNIST(str(tmp_path), 'test')
    image, label = ds[3]
    assert len(ds) == 12 and image.size == (28, 28) and image.mode == 'L' and label == 3
    assert ds.classes[9] == 'Ankle boot'


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt install dataset-fashion-mnist'):
        FashionMNIST(str(tmp_path / 'missing'))
    make_fashion(tmp_path, labels=[0] * 11 + [10])
    with pytest.raises(ValueError, match='label 10 at index 11 is outside 0..9'):
        FashionMNIST(str(tmp_path))
    bad = tmp_path / 'bad.gz'
    with gzip.open(bad, 'wb') as f:
        f.write(b'\x00\x00\x08\x03' + (5).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + b'\x00' * 100)
    with pytest.raises(ValueError, match='truncated'):
        read_idx(str(bad))
    bad.write_bytes(b'not gzip at all')
    with pytest.raises(ValueError, match='cannot read IDX file'):
        read_idx(str(bad))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        FashionMNIST(str(tmp_path), 'val')


def test_image_folder_split_is_stratified_and_seeded(tmp_path):
    make_folder(tmp_path, classes=3, per_class=10)
    train, val, classes = image_folder(str(tmp_path), 0.2, seed=1)
    assert classes == ['class0', 'class1', 'class2'] and len(train) == 24 and len(val) == 6
    assert sorted(val.dataset.targets[i] for i in val.indices) == [0, 0, 1, 1, 2, 2]
    assert image_folder(str(tmp_path), 0.2, seed=1)[1].indices == val.indices
    assert image_folder(str(tmp_path), 0.2, seed=2)[1].indices != val.indices
    (tmp_path / 'train').mkdir()  # an explicit train/val layout is used as it is
    (tmp_path / 'val').mkdir()
    make_folder(tmp_path / 'train', classes=2, per_class=3)
    make_folder(tmp_path / 'val', classes=2, per_class=2)
    train, val, classes = image_folder(str(tmp_path))
    assert len(train) == 6 and len(val) == 4 and classes == ['class0', 'class1']


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='image folder not found'):
        image_folder(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no images'):
        image_folder(str(tmp_path / 'empty'))
    make_folder(tmp_path / 'one', classes=1)
    with pytest.raises(ValueError, match='1 class folder'):
        image_folder(str(tmp_path / 'one'))
    root = make_folder(tmp_path / 'broken', classes=2, per_class=3)
    (root / 'class1' / '2.png').write_bytes(b'this is not a png')
    with pytest.raises(ValueError, match=r'1 image file\(s\) in .*broken cannot be read: .*2\.png: not an image file'):
        image_folder(str(root), 0.3, seed=0)  # found when the folder is listed
    png = bytearray((root / 'class0' / '0.png').read_bytes())  # header and end intact, pixels corrupt:
    start = png.index(b'IDAT') + 8  # only decoding finds it
    png[start:start + 40] = bytes(40)
    (root / 'class1' / '2.png').write_bytes(bytes(png))
    train, val, _ = image_folder(str(root), 0.3, seed=0)
    with pytest.raises(ValueError, match=r'cannot read image .*2\.png'):
        [train[i] for i in range(len(train))] + [val[i] for i in range(len(val))]


@pytest.mark.parametrize('in_chans, mode', [(1, 'RGB'), (3, 'L'), (1, 'L')])
def test_preprocessing_matches_the_model(tmp_path, in_chans, mode):
    make_folder(tmp_path, mode=mode, size=40)
    model = dynvit.create_model('test_dynamicvit', in_chans=in_chans, num_classes=3)
    train, val, _ = build_datasets(str(tmp_path), model, val_fraction=0.3)
    for ds in (train, val):
        x, y = ds[0]
        assert x.shape == (in_chans, 32, 32) and x.dtype == torch.float32
    with torch.no_grad():
        model.eval()(torch.stack([val[i][0] for i in range(2)]))
    # the size follows the model, not its pretrained cfg's default
    small = dynvit.create_model('dynamicvit_tiny_patch16_224', img_size=28, patch_size=4, in_chans=1)
    assert model_transform(small)(Image.new('RGB', (50, 60))).shape == (1, 28, 28)


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    make_folder(tmp_path, size=40)
    model = dynvit.create_model('test_dynamicvit', num_classes=3)
    train, _, _ = build_datasets(str(tmp_path), model, val_fraction=0.3)
    a, b = SeededAugmentation(train, 7), SeededAugmentation(train, 7)
    state = torch.get_rng_state()
    first = a[2][0]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    b[0], b[1]  # other items first: no effect on item 2
    assert torch.equal(b[2][0], first)
    a.set_epoch(1)
    assert not torch.equal(a[2][0], first)


def test_folder_gifs_are_images_and_other_files_are_named(tmp_path):
    root = make_folder(tmp_path / 'imgs', classes=2, per_class=4)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / 'class0' / 'anim.gif')
    (root / 'class1' / 'notes.txt').write_text('not an image')
    (root / 'class1' / '._0.png').write_bytes(b'macOS resource fork')
    train, val, classes = image_folder(str(root), val_fraction=0.25)
    assert len(train) + len(val) == 9  # the GIF is an image
    assert [p.rsplit('/', 1)[-1] for p in dynvit.data.skipped_files(train, val)] == ['._0.png', 'notes.txt']
    r = run_cli('eval', 'test_dynamicvit', '--data', root, '--val-fraction', '0.25',
                '--model-args', '{"num_classes": 2}', '--json')
    assert r.returncode == 0, r.stderr
    assert '2 file(s) in' in r.stderr and 'are skipped (not images dynvit reads' in r.stderr
    assert 'notes.txt' in r.stderr


def test_readers_take_what_users_have_or_name_why_not(tmp_path):
    """16-bit grayscale (scaled, not saturated), CMYK, palette and transparent GIF / PNG, and a large
    sideways JPEG decoded at a reduced scale (upright, both sides kept above the asked size);
    a text file named .jpg, an empty file and a cut-off JPEG are one-line reasons."""
    from dynvit.data import ImageReadError, load_image
    from dynvit.data.transforms import ConvertMode
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    Image.fromarray(np.linspace(0, 65535, 24 * 24).reshape(24, 24).astype(np.uint16)).save(tmp_path / 'deep.png')
    rgb.convert('CMYK').save(tmp_path / 'cmyk.jpg')
    rgb.convert('P').save(tmp_path / 'clear.gif', transparency=0)
    rgb.convert('P').save(tmp_path / 'clear.png', transparency=0)
    rgb.convert('P').save(tmp_path / 'palette.gif')
    sideways = Image.linear_gradient('L').resize((2400, 800))
    exif = sideways.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: upright it is 800 wide, 2400 high
    sideways.save(tmp_path / 'sideways.jpg', exif=exif)
    for name in ('deep.png', 'cmyk.jpg', 'clear.gif', 'clear.png', 'palette.gif'):
        pixels = np.asarray(ConvertMode('RGB')(load_image(str(tmp_path / name))))
        assert pixels.shape == (24, 24, 3) and 50 < pixels.mean() < 200 and pixels.std() > 20, name
    big = load_image(str(tmp_path / 'sideways.jpg'), min_size=150)
    assert big.mode == 'L' and big.size == (200, 600)  # decoded at 1/4 (800 // 150 = 5), then turned upright
    assert load_image(str(tmp_path / 'sideways.jpg')).size == (800, 2400)
    (tmp_path / 'text.jpg').write_text('not a picture')
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'cut.jpg').write_bytes((tmp_path / 'sideways.jpg').read_bytes()[:3000])
    for name, reason in (('text.jpg', 'not an image file'), ('empty.png', 'empty file'), ('cut.jpg', 'truncated')):
        with pytest.raises(ImageReadError, match=reason) as e:
            load_image(str(tmp_path / name), min_size=150)
        assert '\n' not in str(e.value)
