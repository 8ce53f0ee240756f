"""A practitioner's first hour with their own photos (issue 27, items 1-8): a small folder of
RGB photos fine-tuned, resumed and extended; the start-up summary says what the model sees and
what its sparsity does; folders with an empty class or an unreadable image are named before any
work; every option's default is in ``--help``."""
import hashlib
import re

import numpy as np
import pytest
import torch
from PIL import Image

import dynvit
from dynvit.cli import build_parser
from dynvit.cli._common import HelpFormatter
from dynvit.data import describe_input, image_folder
from dynvit.runtime import profile
from dynvit.train import WARMUP_CAP, TrainConfig

from helpers import run_cli
from test_train import _cli


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Three classes of 10 RGB JPEG photos (not square, not the model's size)."""
    root = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    for c in ('bird', 'cat', 'dog'):
        (root / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / c / f'{i}.jpg')
    return root


def _finetune(photos, out, *more):
    return run_cli('finetune', 'test_dynamicvit', '--data', photos, '--out', out, '--epochs', '1', '--quiet',
                   '--val-fraction', '0.2', '--threads', '1', *more)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_small_folder_trains_with_a_fitted_batch_and_the_summary_says_what_the_model_sees(photos, tmp_path):
    """Items 1-3: 24 training images and the default batch (64) give batches of 6; the summary
    names the input the model sees and what the target setting keeps, in numbers of this run."""
    r = _finetune(photos, tmp_path / 'run')
    assert r.returncode == 0, r.stderr
    assert 'schedule: 1 epoch(s) of 4 steps of 6 images (fitted to the 24 training images; --batch-size sets it)' \
        in r.stdout, r.stdout
    model = dynvit.create_model('test_dynamicvit', num_classes=3)
    assert f'input: {describe_input(model)}' in r.stdout
    assert describe_input(model).startswith(f'{model.pretrained_cfg["input_size"][0]}x')
    sparsity = next(line for line in r.stdout.splitlines() if line.strip().startswith('sparsity:'))
    assert 'stage s keeps rho^s of the original patches' in sparsity and '0.25 / 0.125' not in sparsity  # no example
    _, val, _ = image_folder(str(photos), 0.2, 0, None, dynvit.data.model_transform(model))
    with torch.no_grad():
        _, report = profile(model.eval(), val[0][0][None])
    kept = ' / '.join(map(str, report.images[0].kept))
    assert (f'at {model.level_text()}: {model.stage_label} {kept} of {report.total} patches, '
            f'{report.saved_fraction:.1%} of the MACs saved on the first validation image') in sparsity, sparsity
    assert 'warm-up 0.2 epoch(s), capped at 20% of the run' in r.stdout


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(photos, tmp_path):
    """Item 4."""
    out = tmp_path / 'run'
    assert _finetune(photos, out).returncode == 0
    before = {p.name: _digest(p) for p in out.iterdir()}
    r = _finetune(photos, out, '--resume')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f'the run in {out} is complete: 1 of 1 epoch(s) trained') and 'nothing to do' in r.stdout
    assert '--resume --allow-changes' in r.stdout and 'model saved' not in r.stdout and 'head reset' not in r.stdout
    assert {p.name: _digest(p) for p in out.iterdir()} == before


def test_a_resume_names_changed_settings_and_refuses_them_unless_allowed(photos, tmp_path):
    """Item 5: --epochs, --batch-size, --lr and the knob compared with the saved run; with
    --allow-changes the run goes on, says so, and is described as a resume."""
    out = tmp_path / 'run'
    assert _finetune(photos, out).returncode == 0
    r = _finetune(photos, out, '--resume', '--epochs', '2', '--batch-size', '4', '--lr', '1e-3', '--keep-ratio', '0.6')
    assert r.returncode == 1
    assert (f'the run in {out} was saved with --epochs 1 (this command: 2), --batch-size 6 (this command: 4), '
            f'--lr 0.0005 (this command: 0.001), --keep-ratio ') in r.stderr, r.stderr
    assert 'add --allow-changes' in r.stderr and r.stderr.count('\n') == 1
    r = _finetune(photos, out, '--resume', '--epochs', '2', '--allow-changes', '--workers', '0')
    assert r.returncode == 0, r.stderr
    assert 'changed: --epochs 1 -> 2 (--allow-changes)' in r.stdout and '--workers' not in r.stdout  # no effect
    assert f'resumed from {out / "train_state.safetensors"} at epoch 2/2, step 0/4' in r.stdout
    assert 'head reset' not in r.stdout and 'epoch 2:' in r.stdout


def test_an_empty_class_folder_is_named(photos, tmp_path):
    """Item 6."""
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(photos, root)
    (root / 'emptyclass').mkdir()
    r = _finetune(root, tmp_path / 'run')
    assert r.returncode == 1
    assert r.stderr == (f'dynvit finetune: error: class folder(s) {root / "emptyclass"} hold no images (30 images in '
                        f'the other 3 classes): add images to them or remove them (each subfolder of {root} is a '
                        f'class)\n')


def test_unreadable_images_are_named_at_start_up_or_skipped_when_asked(photos, tmp_path):
    """Item 7: a cut-off JPEG and a text file named .jpg are found when the folder is listed (no
    model has run, nothing is written); --skip-unreadable trains without them and names them."""
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(photos, root)
    whole = (root / 'cat' / '0.jpg').read_bytes()
    (root / 'cat' / 'corrupt.jpg').write_bytes(whole[:len(whole) // 2])
    (root / 'dog' / 'notes.jpg').write_text('not a photo')
    r = _finetune(root, tmp_path / 'run')
    assert r.returncode == 1 and not (tmp_path / 'run').exists()
    assert (f'2 image file(s) in {root} cannot be read: {root / "cat" / "corrupt.jpg"}: JPEG file cut short: a partial '
            f'download or copy; {root / "dog" / "notes.jpg"}: not an image file') in r.stderr
    assert 'pass --skip-unreadable' in r.stderr
    r = _finetune(root, tmp_path / 'run', '--skip-unreadable')
    assert r.returncode == 0, r.stderr
    assert f'2 file(s) in {root} are skipped' in r.stderr and 'corrupt.jpg' in r.stderr and 'notes.jpg' in r.stderr
    assert '24 training and 6 validation images' in r.stdout
    with pytest.raises(ValueError, match='cannot be read'):
        image_folder(str(root))
    train, val, _ = image_folder(str(root), skip_unreadable=True)
    assert len(train) + len(val) == 30 and sorted(p.rsplit('/', 1)[-1] for p in train.dataset.unreadable_files) == \
        ['corrupt.jpg', 'notes.jpg']


def test_a_photo_with_data_after_its_end_is_readable(photos, tmp_path):
    """Phones append data after a JPEG's end (motion photos): decoded to tell it from a cut-off file."""
    from dynvit.data.folders import unreadable_reason
    whole = (photos / 'cat' / '0.jpg').read_bytes()
    (tmp_path / 'motion.jpg').write_bytes(whole + b'MotionPhoto_Data' + bytes(4096))
    (tmp_path / 'cut.jpg').write_bytes(whole[:-200])
    assert unreadable_reason(str(tmp_path / 'motion.jpg')) is None
    assert unreadable_reason(str(tmp_path / 'cut.jpg')) == 'JPEG file cut short: a partial download or copy'


def test_every_option_of_every_command_shows_its_default():
    """Item 8 (help): an option that takes a value says its default, or what happens without it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and 'finetune' in a.choices)
    missing = []
    for name, p in sub.choices.items():
        fmt = HelpFormatter(name)
        for action in p._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue
            if 'default' not in fmt._get_help_string(action) % dict(default=action.default):
                missing.append(f'{name} {action.option_strings[-1]}')
    assert not missing, missing
    r = _cli('finetune', '--help')
    text = ' '.join(r.stdout.split())
    for flag in ('--workers', '--seed', '--label-smoothing', '--sparsity-warmup-epochs', '--gate-warmup-epochs',
                 '--aug-scale'):  # the options the issue found without one
        help_text = re.search(re.escape(flag) + r' [A-Z_]+ (.*?)(?= --[a-z]|$)', text).group(1)
        assert '(default: ' in help_text, (flag, help_text)
    assert 'DataLoader worker processes (0: load in the main process) (default: 0)' in text


def test_the_warm_up_of_a_short_run_is_capped():
    """Item 8 (warm-up): one epoch is not all warm-up."""
    assert TrainConfig(epochs=1, warmup_epochs=1.0).lr_warmup_epochs == pytest.approx(WARMUP_CAP)
    assert TrainConfig(epochs=15, warmup_epochs=1.0).lr_warmup_epochs == 1.0
    assert WARMUP_CAP == 0.2 and 'at most a fifth of the run' in ' '.join(_cli('finetune', '--help').stdout.split())


def test_the_first_hour_as_a_user_types_it(photos, tmp_path):
    """The items about the command line, each in a new interpreter as a user runs it: a small
    folder trains with a fitted batch (1) and says what the model sees (2); resuming the finished
    run says it is complete (4); `list fmnist` finds the zoo's tags (9); `predict` on a class-folder
    root says to pass --recursive (10); `viz --out out.xyz` is refused before any model runs (11)."""
    out = tmp_path / 'run'
    common = ['finetune', 'test_dynamicvit', '--data', str(photos), '--out', str(out), '--epochs', '1', '--quiet',
              '--val-fraction', '0.2', '--threads', '1']
    r = _cli(*common)
    assert r.returncode == 0, r.stderr
    assert 'steps of 6 images (fitted to the 24 training images' in r.stdout and '    input: 3x32x32 RGB' in r.stdout
    r = _cli(*common, '--resume')
    assert r.returncode == 0 and f'the run in {out} is complete' in r.stdout, r.stdout + r.stderr
    r = _cli('list', 'fmnist')
    assert r.returncode == 0 and 'dynamicvit_pico_patch4_28.fmnist_kr05' in r.stdout.split(), r.stdout + r.stderr
    r = _cli('predict', 'dynamicvit_pico_patch4_28.fmnist_kr05', str(photos))
    assert r.returncode == 1 and 'but its subfolders hold 30: pass --recursive' in r.stderr, r.stderr
    r = _cli('viz', 'no_such_model', str(photos), '--recursive', '--out', str(tmp_path / 'out.xyz'))
    assert r.returncode == 1 and 'dynvit cannot write .xyz files' in r.stderr and '.png' in r.stderr, r.stderr
