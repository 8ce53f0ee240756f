"""The command line as a user runs it: in this process (``cli``) where a second torch start-up would
only cost time, in a new interpreter where start-up, the environment or memory is tested."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dynvit.data import FASHION_MNIST_CLASSES

from helpers import run_cli as cli


def test_list_json_and_pattern():
    r = cli('list', 'dynamicvit_*', '--json')
    assert r.returncode == 0
    assert json.loads(r.stdout) == ['dynamicvit_256_patch16_224', 'dynamicvit_base_patch16_224',
                                    'dynamicvit_pico_patch4_28', 'dynamicvit_small_patch16_224',
                                    'dynamicvit_tiny_patch16_224']
    # the internal test_* models: with --all, or a pattern naming them
    assert not any(n.startswith('test_') for n in cli('list').stdout.split())
    assert 'test_dynamicvit' in cli('list', '--all').stdout.split()
    names = cli('list', 'test_').stdout.split()
    assert 'test_evovit' in names and all(n.startswith('test_') for n in names)
    rows = json.loads(cli('list', '--pretrained', '--json').stdout)
    by_name = {row['name']: row for row in rows}
    assert by_name['dynamicvit_small_patch16_224.deit_in1k']['weights'] in ('download', 'cached')
    kr05 = by_name['dynamicvit_pico_patch4_28.fmnist_kr05']
    assert kr05['weights'] == 'shipped' and 0.8 < kr05['top1'] < 1 and 0 < kr05['macs'] < 1e8
    assert {'name', 'weights', 'source', 'description', 'dataset', 'top1', 'top5', 'macs',
            'saved_fraction'} <= set(kr05)


def test_list_finds_pretrained_tags_and_says_when_nothing_matches():
    """A word only pretrained tags hold lists those arch.tag names; one that matches nothing says so
    in one line on stderr, never an empty line on stdout."""
    tagged = cli('list', 'fmnist', '--pretrained', '--json')
    expected = [row['name'] for row in json.loads(tagged.stdout)]
    r = cli('list', 'fmnist')
    assert r.returncode == 0 and r.stdout.split() == expected and 'fbs_resnet18_half.fmnist_d50' in expected
    assert r.stderr == (f"dynvit list: {len(expected)} pretrained tag(s) match 'fmnist' (arch.tag names; "
                        f"`dynvit list fmnist --pretrained` shows their weights and accuracy)\n")
    assert json.loads(cli('list', 'FMNIST', '--json').stdout) == expected  # any case
    assert 'dynvit_pico_patch4_28.fmnist' not in cli('list', 'pico').stdout  # the archs matched: no tags added
    r = cli('list', 'nosuchword')
    assert (r.returncode, r.stdout) == (0, '') and r.stderr == (
        "dynvit list: no model name or pretrained tag matches 'nosuchword'; `dynvit list` shows every model, "
        "`dynvit list --pretrained` every arch.tag with weights\n")
    r = cli('list', 'nosuchword', '--pretrained', '--json')
    assert (r.returncode, r.stdout) == (0, '[]\n') and r.stderr.count('\n') == 1
    r = cli('list', 'resnet2')  # only test_fbs_resnet2
    assert r.stdout == '' and "only internal test models match 'resnet2': `dynvit list resnet2 --all`" in r.stderr
    r = cli('list', 'test_dyn', '--pretrained')
    assert r.stdout == '' and 'no pretrained weights match \'test_dyn\', but 2 model(s) without weights do' in r.stderr


def test_info_reports_macs():
    r = cli('info', 'test_dynamicvit', '--keep-ratio', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['sparsity']['keep_ratio'] == [0.5, 0.25, 0.125]
    assert info['untrained'] == ['keep predictors']  # a bare arch: random weights
    assert 0 < info['sparse_gmacs'] < info['dense_gmacs']


def test_renamed_zoo_model_warns_in_one_line():
    r = cli('info', 'dynamicvit_tiny_patch16_224.fmnist_kr05', '--json')
    assert r.returncode == 0 and json.loads(r.stdout)['model'] == 'dynamicvit_pico_patch4_28.fmnist_kr05'
    assert r.stderr == ("dynvit info: warning: 'dynamicvit_tiny_patch16_224.fmnist_kr05' is the zoo's old name of "
                        "'dynamicvit_pico_patch4_28.fmnist_kr05' (named for its real geometry) and goes in dynvit 0.3: "
                        "use 'dynamicvit_pico_patch4_28.fmnist_kr05'\n")


def test_info_fbs_density():
    r = cli('info', 'test_fbs_resnet', '--density', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['sparsity']['density'] == 0.5 and 0 < info['sparse_gmacs'] < info['dense_gmacs']
    assert info['untrained'] == ['channel gates']
    r = cli('info', 'test_fbs_resnet', '--density', '0')  # out of range: bad usage
    assert r.returncode == 2 and 'argument --density: must be in (0, 1], got 0' in r.stderr


def test_unknown_model_is_a_one_line_error():
    r = cli('info', 'dynamicvit_smal_patch16_224')
    assert r.returncode == 1
    assert r.stderr.strip().count('\n') == 0
    assert 'did you mean dynamicvit_small_patch16_224' in r.stderr
    r = cli('info', 'test_dynamicvit', '--keep-ratio', '1.5')
    assert r.returncode == 2 and 'argument --keep-ratio: must be in (0, 1], got 1.5' in r.stderr


def test_help_has_examples():
    for cmd in ('list', 'info', 'predict', 'viz', 'bench', 'demo', 'finetune', 'eval', 'compress'):
        r = cli(cmd, '--help')
        assert r.returncode == 0 and 'examples:' in r.stdout
    r = cli('predict')  # missing arguments: argparse's usage error
    assert r.returncode == 2 and 'usage:' in r.stderr


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """What users have: PNG with alpha, grayscale JPEG, WebP of another size, a 16-bit PNG, a GIF, a
    CMYK JPEG, a corrupt and an empty file among them and a text file, all in one folder."""
    root = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), 'RGBA').save(root / 'a_rgba.png')
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), 'L').save(root / 'b_gray.jpg')
    Image.fromarray(rng.integers(0, 256, (50, 64, 3), dtype=np.uint8), 'RGB').save(root / 'c_color.webp')
    Image.fromarray(rng.integers(0, 65535, (28, 28), dtype=np.uint16)).save(root / 'd_16bit.png')
    (root / 'e_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not really a PNG')
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), 'RGB').save(root / 'f_anim.gif')
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), 'RGB').convert('CMYK').save(root / 'g_cmyk.jpg')
    (root / 'h_empty.png').write_bytes(b'')
    (root / 'notes.txt').write_text('not an image: named on stderr, not an error')
    return root


def test_predict_reads_what_users_have_and_names_the_corrupt_file(photos):
    r = cli('predict', 'fbs_resnet18_half.fmnist_d50', str(photos), '--topk', '3', '--json', '--threads', '1')
    assert r.returncode == 3, r.stderr  # some images failed, the others were predicted
    out = json.loads(r.stdout)
    assert out['input'].startswith('1x64x64 grayscale')
    assert [p['image'].rsplit('/', 1)[-1] for p in out['predictions']] == [
        'a_rgba.png', 'b_gray.jpg', 'c_color.webp', 'd_16bit.png', 'f_anim.gif', 'g_cmyk.jpg']
    assert [(e['image'].rsplit('/', 1)[-1], e['error']) for e in out['errors']] == [
        ('e_corrupt.png', 'not an image file (PIL does not recognise its contents)'), ('h_empty.png', 'empty file')]
    assert [e['file'].rsplit('/', 1)[-1] for e in out['skipped']] == ['notes.txt']
    # every file of the folder is predicted or named, one line each
    assert 'e_corrupt.png' in r.stderr and 'notes.txt: not an image type' in r.stderr and r.stderr.count('\n') == 3
    assert 'h_empty.png: empty file\n' in r.stderr  # once, no path repeated, no object repr
    for p in out['predictions']:
        assert len(p['topk']) == 3 and p['topk'][0]['prob'] >= p['topk'][1]['prob']
        assert p['topk'][0]['label'] in FASHION_MNIST_CLASSES
        assert p['macs'] < p['dense_macs'] and 0.5 < p['saved_fraction'] < 0.6
        assert sum(p['kept']) * 2 == sum(p['out_of'])  # density 0.5
    r = cli('predict', 'fbs_resnet18_half.fmnist_d50', str(photos / 'b_gray.jpg'), '--density', '0.25', '--threads', '1')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ('fbs_resnet18_half.fmnist_d50 sees each image as 1x64x64 grayscale (color images are '
                        'converted), resized to 73 px (bilinear) and center-cropped to 64x64, normalised with mean '
                        '0.286, std 0.353')  # what the model sees (a color photo, too)
    assert lines[1].endswith('b_gray.jpg') and 'saved' in lines[3]
    assert r.stdout.count('MMACs') == 1


def test_predict_options_that_do_not_fit_the_model_are_named(photos, tmp_path):
    r = cli('predict', 'fbs_resnet18_half.fmnist_d50', str(photos / 'b_gray.jpg'), '--keep-ratio', '0.5')
    assert r.returncode == 1 and '--keep-ratio is not a setting of FBS models' in r.stderr
    assert 'they take --density (d: every gated convolution computes the top ceil(d * C)' in r.stderr
    r = cli('predict', 'test_dynamicvit', str(photos / 'b_gray.jpg'), '--density', '0.5')
    assert r.returncode == 1 and 'they take --keep-ratio (rho: stage s keeps rho^s' in r.stderr
    r = cli('predict', 'dynamicvit_pico_patch4_28.fmnist_kr5', str(photos / 'b_gray.jpg'))  # a tag typo
    assert r.returncode == 1 and 'no pretrained tag \'fmnist_kr5\'; did you mean dynamicvit_pico_patch4_28.fmnist_kr05' \
        in r.stderr and r.stderr.count('\n') == 1
    r = cli('list', 'fmnist', '--pretrained')  # a plain word matches as a substring
    assert r.returncode == 0 and 'dynamicvit_pico_patch4_28.fmnist_kr05' in r.stdout.split()
    r = cli('predict', 'test_dynamicvit', str(photos / 'b_gray.jpg'), '--checkpoint', '')
    assert r.returncode == 1 and 'the checkpoint path is empty' in r.stderr  # not random weights
    import dynvit
    dynvit.save_model(dynvit.create_model('test_fbs_resnet'), str(tmp_path / 'fbs.safetensors'))
    r = cli('predict', 'test_dynamicvit', str(photos / 'b_gray.jpg'), '--checkpoint', str(tmp_path / 'fbs.safetensors'))
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and \
        f'{tmp_path / "fbs.safetensors"} holds a test_fbs_resnet model, which test_dynamicvit cannot be built' in r.stderr
    r = cli('predict', 'test_evovit', str(photos / 'b_gray.jpg'), '--threshold', '0.5')
    assert r.returncode == 1 and 'no threshold mode' in r.stderr
    r = cli('predict', 'test_dynamicvit', str(photos / 'missing.png'))
    assert r.returncode == 1 and 'missing.png: no such file' in r.stderr and 'no readable image' not in r.stdout
    r = cli('predict', 'dynamicvit_tiny_patch16_22', str(photos))
    assert r.returncode == 1 and 'did you mean dynamicvit_tiny_patch16_224' in r.stderr


def test_empty_and_mislabelled_files_are_named_once(tmp_path):
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'text.jpg').write_text('a text file named .jpg')
    r = cli('predict', 'test_dynamicvit', str(tmp_path / 'empty.png'), str(tmp_path / 'text.jpg'))
    assert r.returncode == 1 and 'none of the given paths is a readable image' in r.stderr
    assert f'skipped {tmp_path / "empty.png"}: empty file\n' in r.stderr
    assert f'skipped {tmp_path / "text.jpg"}: not an image file' in r.stderr
    assert r.stderr.count(str(tmp_path / 'empty.png')) == 1 and '<_io.' not in r.stderr


def test_predict_recursive_reads_class_subfolders(tmp_path):
    """A folder per class: without --recursive one line says the subfolders hold the images (before the
    model is loaded); with it they are read in path order, each named by its path."""
    for name in ('cat/0.png', 'cat/1.png', 'dog/0.png', 'a.txt', '.cache/0.png'):
        (tmp_path / 'mydata' / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (28, 28), 'gray').save(tmp_path / 'mydata' / name, format='PNG')
    root = tmp_path / 'mydata'
    r = cli('predict', 'no_such_model', root)  # the images are listed first
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
        f'dynvit predict: error: {root}: no images in the folder, but its subfolders hold 3: pass --recursive to '
        'search them')
    r = cli('predict', 'test_dynamicvit', root, '--recursive', '--json')
    assert r.returncode == 0, r.stderr
    assert [p['image'] for p in json.loads(r.stdout)['predictions']] == [
        str(root / 'cat/0.png'), str(root / 'cat/1.png'), str(root / 'dog/0.png')]
    assert f'skipped {root / ".cache"}: hidden folder (not searched)' in r.stderr and 'a.txt: not an image' in r.stderr
    r = cli('viz', 'test_dynamicvit', root, '--recursive', '--out', tmp_path / 'grid.png', '--size', '32')
    assert r.returncode == 0 and '3 image(s) drawn' in r.stdout


def test_outputs_are_checked_before_the_model_is_loaded(tmp_path):
    """A file a command could not write fails at once, in one line with the types it writes: the model
    (no_such_model) is never looked up."""
    pictures = '.png .jpg .jpeg .webp .bmp .gif .tif .tiff .pdf'
    (tmp_path / 'a_file').write_text('')
    image = tmp_path / 'x.png'
    Image.new('RGB', (28, 28)).save(image)
    for args, message in [
        (('viz', 'no_such_model', image, '--out', 'out.xyz'),
         f'dynvit viz: error: --out out.xyz: dynvit cannot write .xyz files; give a file name ending in one of {pictures}'),
        (('predict', 'no_such_model', image, '--viz', 'kept'),
         f'dynvit predict: error: --viz kept: no file type; give a file name ending in one of {pictures}'),
        (('viz', 'no_such_model', image, '--out', tmp_path),
         f'dynvit viz: error: --out {tmp_path} is a folder; give a file name in it ({tmp_path / "out.png"})'),
        (('viz', 'no_such_model', image, '--out', tmp_path / 'a_file' / 'grid.png'),
         f'dynvit viz: error: --out {tmp_path / "a_file" / "grid.png"}: cannot be written, {tmp_path / "a_file"} is '
         'a file, not a folder'),
        (('demo', '--out', 'demo.svg'), 'dynvit demo: error: --out demo.svg: dynvit cannot write .svg files'),
        (('export', 'no_such_model', 'model.xyz'),
         'dynvit export: error: OUT model.xyz: dynvit cannot write .xyz files; give a file name ending in .onnx'),
        (('compress', 'no_such_model', '--heads', '0.1', '--out', 'small.pt'),
         'dynvit compress: error: --out small.pt: dynvit cannot write .pt files; give a file name ending in '
         '.safetensors'),
        (('convert', image, tmp_path / 'a_file' / 'm.safetensors', '--model', 'no_such_model'),
         f'dynvit convert: error: OUTPUT {tmp_path / "a_file" / "m.safetensors"}: cannot be written'),
    ]:
        r = cli(*args)
        assert r.returncode == 1 and r.stderr.count('\n') == 1 and r.stderr.startswith(message), r.stderr
    r = cli('viz', 'test_dynamicvit', image, '--out', tmp_path / 'new' / 'dir' / 'grid.PNG', '--size', '32')
    assert r.returncode == 0 and (tmp_path / 'new' / 'dir' / 'grid.PNG').is_file()  # folders made, any case


def test_predict_threshold_mode_and_picture(photos, tmp_path):
    r = cli('predict', 'test_dynamicvit', str(photos / 'a_rgba.png'), str(photos / 'c_color.webp'),
            '--threshold', '0.5', '--viz', str(tmp_path / 'kept.png'), '--json', '--size', '64')
    assert r.returncode == 0, r.stderr
    assert 'random weights' in r.stderr
    out = json.loads(r.stdout)
    assert len(out['predictions']) == 2 and out['picture'] == str(tmp_path / 'kept.png')
    assert out['untrained'] == ['keep predictors'] and r.stderr.count('note:') == 1  # the random-weights note says it
    picture = Image.open(tmp_path / 'kept.png')
    assert picture.height > 2 * 64 and picture.width > 4 * 64  # two rows of input + three stages


def test_viz_and_bench(photos, tmp_path):
    r = cli('viz', 'fbs_resnet18_half.fmnist_d50', str(photos / 'b_gray.jpg'), str(photos / 'e_corrupt.png'),
            '--out', str(tmp_path / 'grid.png'))
    assert r.returncode == 3 and '1 image(s) drawn' in r.stdout and (tmp_path / 'grid.png').is_file()
    r = cli('bench', 'test_dynamicvit', '--batch-size', '1', '2', '--runs', '2', '--rounds', '1', '--compare-dense',
            '--json', '--threads', '1')
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)['rows']
    assert [row['batch_size'] for row in rows] == [1, 2]
    assert all(row['ms'] > 0 and row['speedup'] > 0 and row['mean_macs'] < row['dense_macs'] for row in rows)


def test_demo_runs_the_zoo_offline(tmp_path):
    r = cli('demo', '--out', str(tmp_path / 'demo.png'), '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert 'fbs_resnet18_half.fmnist_d50' in r.stdout and 'correct' in r.stdout
    assert str(tmp_path / 'demo.png') in r.stdout and Image.open(tmp_path / 'demo.png').width > 100


def test_list_pretrained_shows_where_the_weights_are():
    r = cli('list', '--pretrained')
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in r.stdout.splitlines()}
    assert rows['fbs_resnet18_half.fmnist_d50'][0] == 'shipped'
    assert rows['fbs_resnet18_half.fmnist_d50'][1].startswith('Fashion-MNIST test top-1 ')
    assert 'MMACs/image' in rows['fbs_resnet18_half.fmnist_d50'][1]
    assert rows['evovit_small_patch16_224.official_in1k'][0] in ('download', 'cached')
    assert all(w in ('shipped', 'cached', 'download') and d for w, d in rows.values())


def test_hub_weights_offline_fail_fast_with_a_hint(photos, tmp_path, monkeypatch):
    """No network (the proxy refuses): one line naming the source and --checkpoint, exit 1, in seconds
    (huggingface_hub alone retries for about a minute)."""
    image = str(photos / 'b_gray.jpg')
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'NO_PROXY')}
    env.update(https_proxy='http://127.0.0.1:9', HTTPS_PROXY='http://127.0.0.1:9', HF_HUB_CACHE=str(tmp_path))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'dynvit', 'predict', 'dynamicvit_tiny_patch16_224.deit_in1k', image],
                       capture_output=True, text=True, timeout=120, env=env)
    assert time.perf_counter() - start < 15  # most of it starting torch; before, ~60 s of retries
    assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
    assert 'could not fetch the pretrained weights of dynamicvit_tiny_patch16_224.deit_in1k: no network' in r.stderr
    assert ('download https://huggingface.co/timm/deit_tiny_patch16_224.fb_in1k elsewhere and give it with '
            '--checkpoint PATH (dynvit predict dynamicvit_tiny_patch16_224.deit_in1k ... --checkpoint') in r.stderr
    # HF_HUB_OFFLINE; a command without --checkpoint is told to convert the file
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    r = cli('compress', 'evovit_tiny_patch16_224.official_in1k', '--heads', '0.3',
            '--out', str(tmp_path / 'x.safetensors'))
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'offline mode (HF_HUB_OFFLINE is set)' in r.stderr
    assert 'dynvit convert path/to/weights.pth weights.safetensors --model evovit_tiny_patch16_224.official_in1k' \
        in r.stderr

ONE_PROCESS = """import resource, sys
from dynvit.cli import main
for argv in sys.argv[1:]:
    code = main(argv.split('|'))
    sys.stdout.flush()
    print(f'=== exit {code}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB', file=sys.stderr)
"""


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    """``dynvit predict`` on a small image, one and six 6000 x 6000 JPEGs (with a text file named .jpg
    among them), and ``predict`` / ``info`` of a DynamicViT started from a dense checkpoint, in one
    process (one torch start-up): per command, its exit code, the process's peak RSS so far (MB)
    and its output lines (stdout and stderr in the order written)."""
    from safetensors.torch import save_file
    import dynvit
    root = tmp_path_factory.mktemp('one_process')
    Image.new('RGB', (40, 40), 'gray').save(root / 'small.png')
    big = root / 'big'
    big.mkdir()
    gradient = Image.linear_gradient('L').resize((6000, 6000))
    Image.merge('RGB', (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient)).save(big / 'p0.jpg')
    del gradient
    for i in range(1, 6):
        (big / f'p{i}.jpg').hardlink_to(big / 'p0.jpg')
    (big / 'p1_broken.jpg').write_text('a text file named .jpg')
    model = dynvit.create_model('test_dynamicvit')
    save_file({k: v for k, v in model.state_dict().items() if not k.startswith('score_predictor.')},
              str(root / 'dense.safetensors'))
    started = dynvit.create_model('test_dynamicvit', checkpoint_path=str(root / 'dense.safetensors'))
    dynvit.save_model(started, str(root / 'started.safetensors'))
    commands = [f'predict|test_dynamicvit|{root / "small.png"}|--checkpoint|{root / "dense.safetensors"}|--json',
                f'predict|test_dynamicvit|{big / "p0.jpg"}|--json', f'predict|test_dynamicvit|{big}|--batch-size|2',
                f'info|{root / "started.safetensors"}|--json']
    r = subprocess.run([sys.executable, '-c', ONE_PROCESS, *commands], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    runs, lines = [], []
    for line in r.stdout.splitlines():
        if line.startswith('=== exit '):
            runs.append((int(line.split()[2][:-1]), int(line.split()[5]), lines))
            lines = []
        else:
            lines.append(line)
    assert len(runs) == len(commands), r.stdout
    return big, runs


def test_predict_streams_large_photos_in_bounded_memory(one_process):
    """Six 6000 x 6000 JPEGs (108 MB each decoded) cost no more memory than one, and one no more than a
    small image: each is decoded at the scale the model's resize needs; the results print per batch."""
    big, ((code0, base, _), (code1, one, _), (code6, six, lines), _) = one_process
    assert (code0, code1, code6) == (0, 0, 3)
    assert one - base < 50 and six - one < 50, (base, one, six)  # decoded at full size: +108 MB, +648 MB
    # streamed: the first batch's results print before the third file (the broken one) is read
    order = [line for line in lines if line.startswith((str(big), 'dynvit predict: skipped'))]
    assert [line.rsplit('/', 1)[-1] for line in order] == [
        'p0.jpg', 'p1.jpg', 'p1_broken.jpg: not an image file (PIL does not recognise its contents)', 'p2.jpg',
        'p3.jpg', 'p4.jpg', 'p5.jpg']


def test_untrained_keep_predictors_are_named_by_predict_and_info(one_process):
    """A DynamicViT started from a dense checkpoint: a one-line note on stderr, ``untrained`` in the JSON
    of ``predict`` and of ``info`` (on a file saved from it before any training)."""
    _, ((_, _, predict), _, _, (code, _, info)) = one_process
    notes = [line for line in predict if line.startswith('note:')]
    assert notes == ['note: the keep predictors of test_dynamicvit were not trained (started from a dense '
                     'checkpoint); its choices of patches are not meaningful until fine-tuned (dynvit finetune)']
    out = json.loads('\n'.join(predict[predict.index('{'):]))
    assert out['untrained'] == ['keep predictors'] and len(out['predictions']) == 1
    assert code == 0 and json.loads('\n'.join(info))['untrained'] == ['keep predictors']
