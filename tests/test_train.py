"""The fine-tuning loop: learning, exact resume, atomic checkpoints, schedules, DDP under
torchrun, the exported model, and clear errors for bad labels."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import dynvit
from dynvit.data import build_datasets
from dynvit.train import Trainer, TrainConfig, load_training_state

from helpers import run_cli
from numerics import assert_rounding_close, gradient_tolerance, tolerance
from test_data import make_folder

FAMILIES = ['test_dynamicvit', 'test_evovit', 'test_tome', 'test_fbs_resnet']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('images'), classes=3, per_class=12, size=36)


def trainer(name, folder, out='', augment=True, **config):
    torch.manual_seed(123)
    model = dynvit.create_model(name, num_classes=3)
    train, val, classes = build_datasets(str(folder), model, val_fraction=0.25, train_kwargs=dict(scale=(0.7, 1.0)),
                                         augment=augment)
    cfg = dict(epochs=2, batch_size=6, lr=2e-3, warmup_epochs=0.5)
    cfg.update(config)
    return Trainer(model, train, val, TrainConfig(**cfg), out_dir=str(out), class_names=classes, progress=False)


@pytest.mark.parametrize('name', FAMILIES)
def test_training_lowers_the_loss(name, folder):
    t = trainer(name, folder, augment=False, epochs=4, lr=3e-3)
    history = t.fit()
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert {'val_top1', 'val_mean_macs', 'val_saved_fraction', 'train_keep_rate'} <= set(history[-1])
    assert 'val_top5' not in history[-1]  # 3 classes: top-5 says nothing
    assert 0 < history[-1]['val_saved_fraction'] < 1


@pytest.mark.parametrize('name', FAMILIES)
def test_resume_after_an_interruption_gives_the_same_weights(name, folder, tmp_path):
    straight = trainer(name, folder, tmp_path / 'a')
    straight.fit()

    def interrupt(t):
        if t.epoch == 1 and t.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(name, folder, tmp_path / 'b').fit(on_step=interrupt)
    resumed = trainer(name, folder, tmp_path / 'b')  # a new process would start like this
    assert resumed.resume() and (resumed.epoch, resumed.step) == (1, 2)
    assert resumed.model.untrained_sparse is None  # its predictors / gates had learned before the interruption
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == straight.history  # the same computation: exactly


def test_an_interrupted_write_leaves_the_previous_checkpoint(folder, tmp_path, monkeypatch):
    t = trainer('test_evovit', folder, tmp_path, epochs=1)
    t.fit()
    path = tmp_path / 'train_state.safetensors'
    before = path.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    for written in (path, tmp_path / 'best.safetensors'):  # the usual permissions (safetensors writes 0600)
        assert os.stat(written).st_mode & 0o777 == 0o666 & ~umask

    def crash(tensors, filename, metadata=None):
        with open(filename, 'wb') as f:
            f.write(b'partial')
        raise KeyboardInterrupt

    monkeypatch.setattr('dynvit.hub.files.save_file', crash)
    with pytest.raises(KeyboardInterrupt):
        t.save_state()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith('.tmp')] == []
    monkeypatch.undo()
    fresh = trainer('test_evovit', folder, tmp_path, epochs=1)
    assert load_training_state(str(path), fresh.model, fresh.optimizer, fresh.scheduler)['epoch'] == 1


def test_best_model_is_a_self_describing_file(folder, tmp_path):
    t = trainer('test_fbs_resnet', folder, tmp_path, epochs=1)
    t.model.pretrained_cfg = {**t.model.pretrained_cfg, 'mean': (0.4, 0.4, 0.4)}
    assert t.model.untrained_sparse == 'newly initialised'
    t.fit()
    meta = dynvit.read_dynvit_metadata(str(tmp_path / 'best.safetensors'))
    assert meta['pretrained_cfg']['label_names'] == ['class0', 'class1', 'class2']
    assert meta['pretrained_cfg']['mean'] == [0.4, 0.4, 0.4] and meta['model_args']['num_classes'] == 3
    assert meta['extra']['epoch'] == 1
    loaded = dynvit.create_model('test_fbs_resnet', pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / 'best.safetensors'))).eval()
    assert loaded.pretrained_cfg['label_names'] == ['class0', 'class1', 'class2']
    assert loaded.untrained_sparse is None  # the gates learned: the exported file holds trained ones
    log = [json.loads(line) for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert len(log) == 1 and log[0]['epoch'] == 1


def test_sparsity_schedule_and_gate_warmup(folder):
    t = trainer('test_dynamicvit', folder, epochs=2, sparsity_start=1.0, sparsity_warmup_epochs=2)
    seen = []
    t.fit(on_step=lambda tr: seen.append(tr.model.keep_ratio[0]))
    assert seen[0] > seen[-1] >= t.target[0] and seen == sorted(seen, reverse=True)
    assert seen[0] == pytest.approx(1.0 - (1.0 - t.target[0]) * 0.0, abs=0.2)
    # FBS: during the gate warm-up only the gates move
    f = trainer('test_fbs_resnet', folder, epochs=2, gate_warmup_epochs=1)
    start = {n: p.detach().clone() for n, p in f.model.named_parameters()}
    after = {}

    def snapshot(tr):
        if tr.epoch == 0 and tr.step == tr.steps_per_epoch:
            after.update({n: p.detach().clone() for n, p in tr.model.named_parameters()})

    f.fit(on_step=snapshot)
    moved = {n for n in start if not torch.equal(start[n], after[n])}
    gates = {n for n in start if '.gate' in n}
    assert moved == gates
    assert any(not torch.equal(after[n], p) for n, p in f.model.named_parameters() if n not in gates)  # then joint


def test_merging_warms_up_through_the_sparsity_level(folder):
    """ToMe's level is 1 - r / N (1.0: no merging): the schedule ramps r up to the target, and
    validation runs at the target."""
    t = trainer('test_tome', folder, epochs=2, sparsity_start=1.0, sparsity_warmup_epochs=2)
    seen = []
    t.fit(on_step=lambda tr: seen.append(tr.model.r))
    assert seen[0] < seen[-1] <= 8 and seen == sorted(seen) and t.model.r == 8


def test_learning_rate_warms_up_then_decays(folder):
    t = trainer('test_evovit', folder, epochs=5, warmup_epochs=1, min_lr_ratio=0.1)  # the warm-up: at most 1/5
    lrs = []
    t.fit(on_step=lambda tr: lrs.append(tr.optimizer.param_groups[0]['lr']))
    steps = t.steps_per_epoch
    assert lrs[steps - 2] == pytest.approx(2e-3, rel=1e-6)  # the peak at the end of the warm-up
    assert lrs[0] < lrs[steps - 2] and lrs[-1] == pytest.approx(2e-4, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[steps - 1:], lrs[steps:]))


class _Labels(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.randn(3, 32, 32), 5 if i == 3 else 0


def test_out_of_range_labels_are_named():
    model = dynvit.create_model('test_evovit', num_classes=3)
    t = Trainer(model, _Labels(), None, TrainConfig(epochs=1, batch_size=8), progress=False)
    with pytest.raises(ValueError, match='label 5 is out of range for a model with 3 classes'):
        t.fit()
    with pytest.raises(ValueError, match='fewer than one batch'):
        Trainer(model, _Labels(), None, TrainConfig(epochs=1, batch_size=16), progress=False)


def _cli(*args, env=None, module=('-m', 'dynvit')):
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_two_process_torchrun_matches_one_process(folder, tmp_path):
    common = ['finetune', 'test_evovit', '--data', str(folder), '--epochs', '2', '--batch-size', '8', '--lr', '1e-3',
              '--no-aug', '--quiet', '--threads', '1']
    one = run_cli(*common, '--out', tmp_path / 'one')
    assert one.returncode == 0, one.stderr
    two = _cli('--nproc_per_node', '2', '-m', 'dynvit', *common, '--out', str(tmp_path / 'two'),
               module=('-m', 'torch.distributed.run'))
    assert two.returncode == 0, two.stderr[-2000:]
    from safetensors.torch import load_file
    a, b = (load_file(str(tmp_path / d / 'train_state.safetensors')) for d in ('one', 'two'))
    # Two processes sum two half-batch gradients: rounding-level differences, which Adam (invariant to the
    # gradient's scale) turns into update differences of about lr x that relative rounding per step, plus
    # the rounding of each updated weight. The key biases are the exception: softmax ignores a shift of
    # the keys, so their gradient is rounding noise, which Adam normalises into steps of up to about lr.
    lr, steps = 1e-3, 2 * (27 // 8)  # 27 training images
    model = dynvit.create_model('test_evovit')
    for k in a:
        if k.startswith('model.') and a[k].is_floating_point():
            diff = (a[k] - b[k]).abs()
            strict = steps * (lr * gradient_tolerance(model, torch.ones(())) + tolerance(1, a[k].abs().max()))
            if k.endswith('attn.qkv.bias'):
                diff, keys = diff.view(3, -1)[[0, 2]], diff.view(3, -1)[1]
                assert keys.max() <= steps * lr, k
            assert diff.max() <= strict, k
    # evaluating the exported model from the command line
    r = run_cli('eval', tmp_path / 'two' / 'best.safetensors', '--data', folder, '--val-fraction', '0.25',
             '--json')
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics['images'] == 9 and 0 <= metrics['top1'] <= 1 and 0 < metrics['saved_fraction'] < 1


def test_starting_weights_with_other_classes_reset_the_head(folder, tmp_path):
    source = dynvit.create_model('test_dynamicvit', num_classes=10, keep_ratio=0.5)
    dynvit.save_model(source, str(tmp_path / 'src.safetensors'))
    model = dynvit.create_model('test_dynamicvit', pretrained=True, num_classes=3, keep_ratio=0.7,
                                pretrained_cfg_overlay=dict(file=str(tmp_path / 'src.safetensors')))
    assert model.num_classes == 3 and model.keep_ratio[0] == 0.7
    src, new = source.state_dict(), model.state_dict()
    assert all(torch.equal(src[k], new[k]) for k in new if not k.startswith('head.'))
    train, val, classes = build_datasets(str(folder), model, val_fraction=0.25)
    t = Trainer(model, train, val, TrainConfig(epochs=1, batch_size=6, amp='bf16'), progress=False)
    assert t.fit()[-1]['val_top1'] >= 0  # bf16 autocast on the CPU runs too


def test_external_teacher_sees_the_images_it_was_trained_on():
    """A CNN teacher on gray 16-px inputs normalised its own way, fed a ViT student's RGB 32-px batches:
    the adapter undoes the student's normalisation, converts to gray, resizes and renormalises."""
    from dynvit.train import ExternalTeacher
    torch.manual_seed(0)
    teacher = dynvit.create_model('test_fbs_resnet', in_chans=1, num_classes=3, density=1.0).eval()
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, 'input_size': (1, 16, 16), 'mean': (0.2,), 'std': (0.4,),
                              'interpolation': 'bilinear'}
    pixels = torch.rand(2, 3, 32, 32)
    s_mean, s_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    student_batch = (pixels - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    adapted = ExternalTeacher(teacher, s_mean, s_std, student_chans=3)
    luma = (pixels * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # as PIL's 'L'
    gray = torch.nn.functional.interpolate(luma, size=(16, 16), mode='bilinear', antialias=True)
    with torch.no_grad():
        expected = teacher((gray - 0.2) / 0.4)
    assert_rounding_close(teacher, adapted(student_batch), expected)  # the same pixels, rounded in another order
    adapted.train()
    assert not adapted.model.training and not any(p.requires_grad for p in adapted.parameters())
    with pytest.raises(ValueError, match='channels'):
        ExternalTeacher(dynvit.create_model('test_fbs_resnet', in_chans=3), s_mean, s_std, student_chans=2)


def test_cli_finetune_distils_from_an_external_teacher(folder, tmp_path):
    teacher = dynvit.create_model('test_fbs_resnet', num_classes=3)
    dynvit.save_model(teacher, str(tmp_path / 'teacher.safetensors'))
    common = ['finetune', 'test_dynamicvit', '--data', str(folder), '--epochs', '1', '--batch-size', '6',
              '--quiet', '--threads', '1', '--keep-ratio', '1.0', '--teacher', str(tmp_path / 'teacher.safetensors')]
    r = run_cli(*common, '--out', str(tmp_path / 'run'))
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')]
    assert log[-1]['epoch'] == 1
    r = run_cli(*common, '--out', str(tmp_path / 'run2'), '--no-distill')
    assert r.returncode != 0 and 'contradict' in r.stderr


@pytest.mark.parametrize('name', FAMILIES)
def test_distillation_weight_and_temperature_reach_every_family_loss(name, folder):
    t = trainer(name, folder, distill_weight=0.3, distill_temperature=4.0)
    assert t.loss_fn.distill_weight == 0.3 and t.loss_fn.temperature == 4.0
    with pytest.raises(ValueError, match='distill_temperature'):
        TrainConfig(distill_temperature=0).check()


def test_a_gray_student_with_an_rgb_mean_in_its_cfg_gets_a_working_teacher():
    """A 1-channel ViT keeps ImageNet's three-value mean in its cfg; its batches are normalised with
    the average (model_norm), and the teacher adapter undoes exactly that."""
    from dynvit.data import model_norm, model_transform
    from dynvit.train import ExternalTeacher
    student = dynvit.create_model('test_dynamicvit', in_chans=1, num_classes=3)
    student.pretrained_cfg = {**student.pretrained_cfg, 'crop_pct': 1.0}  # the 32-px image passes unchanged
    mean, std = model_norm(student)
    assert len(mean) == len(std) == 1
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8), 'L')
    x = model_transform(student)(image)[None]
    teacher = dynvit.create_model('test_fbs_resnet', in_chans=1, num_classes=3, density=1.0).eval()
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, 'input_size': (1, 32, 32), 'mean': (0.3,), 'std': (0.2,)}
    expected = teacher((torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None, None] - 0.3) / 0.2)
    assert_rounding_close(teacher, ExternalTeacher(teacher, mean, std, 1)(x), expected)


def test_cli_compress_finetune_pruned_and_eval_int8(folder, tmp_path):
    """The compression workflow from the command line: structured pruning into a file, fine-tuning
    it with weight masks or AutoPrune (pruned weights stay zero in the export), evaluating in INT8."""
    source = dynvit.create_model('test_dynamicvit', num_classes=3)
    dynvit.save_model(source, str(tmp_path / 'src.safetensors'))
    small = str(tmp_path / 'small.safetensors')
    r = run_cli('compress', str(tmp_path / 'src.safetensors'), '--heads', '0.5', '--mlp', '0.5', '--dtype', 'fp16',
             '--out', small, '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['after']['parameters'] < info['before']['parameters'] and info['after']['mean_macs'] < \
        info['before']['mean_macs']
    common = ['finetune', small, '--data', str(folder), '--epochs', '1', '--batch-size', '6', '--quiet',
              '--threads', '1', '--no-distill']
    r = run_cli(*common, '--prune-weights', '0.5', '--out', str(tmp_path / 'masked'))
    assert r.returncode == 0, r.stderr
    r = run_cli(*common, '--autoprune', '5', '--autoprune-lr', '0.5', '--out', str(tmp_path / 'auto'))
    assert r.returncode == 0, r.stderr
    assert 'weight_sparsity' in json.loads(open(tmp_path / 'auto' / 'log.jsonl').readline())
    tuned = dynvit.load_model(str(tmp_path / 'masked' / 'best.safetensors'))
    assert [b.attn.num_heads for b in tuned.blocks] == [max(1, b.attn.num_heads // 2) for b in source.blocks]
    assert dynvit.compress.sparsity(tuned).overall == pytest.approx(0.5, abs=0.01)
    r = run_cli('eval', str(tmp_path / 'masked' / 'best.safetensors'), '--data', str(folder), '--val-fraction', '0.25',
             '--json', '--int8')
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout)['top1'] <= 1
    r = run_cli(*common, '--prune-weights', '0.5', '--autoprune', '5', '--out', str(tmp_path / 'both'))
    assert r.returncode == 1 and 'choose one' in r.stderr


def test_finetune_and_eval_start_from_the_weights_an_arch_tag_names():
    """`dynvit finetune ARCH.TAG` / `dynvit eval ARCH.TAG` use the tag's weights (here the zoo's), a bare
    arch name starts from scratch."""
    import argparse
    from dynvit.cli.training import _model_for_data
    args = argparse.Namespace(model='fbs_resnet18_half.fmnist_d50', checkpoint=None, model_args=None, seed=0,
                              mean=None, std=None, img_size=None)
    shipped = dynvit.create_model('fbs_resnet18_half.fmnist_d50', pretrained=True)
    tuned, source = _model_for_data(args, 3)
    assert source == 'pretrained fbs_resnet18_half.fmnist_d50'
    assert tuned.num_classes == 3 and tuned.density == shipped.density
    assert torch.equal(tuned.layer1[0].conv1.weight, shipped.layer1[0].conv1.weight)
    args.model = 'fbs_resnet18'
    scratch, source = _model_for_data(args, 3)
    assert source == 'random'
    assert not torch.equal(scratch.layer1[0].conv1.weight[:8, :8], shipped.layer1[0].conv1.weight[:8, :8])


def test_cli_finetune_interrupted_anywhere_resumes_to_the_state_of_an_uninterrupted_run(folder, tmp_path):
    """A BatchNorm model (FBS ResNet) stopped by a real SIGINT mid forward, mid optimizer step,
    during validation, and twice (at once, unsaved), then resumed with ``--resume``, ends with
    every tensor of the uninterrupted run: weights, BatchNorm statistics, optimizer moments,
    random states; the same log and best model."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    args = ['test_fbs_resnet', '--epochs', '2', '--batch-size', '6', '--val-fraction', '0.25', '--density', '0.5',
            '--sparsity-warmup-epochs', '1', '--no-distill', '--quiet', '--threads', '1']
    driver = os.path.join(os.path.dirname(__file__), 'interrupted_runs.py')
    r = subprocess.run([sys.executable, driver, str(folder), str(tmp_path), *args], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'STEPS_PER_EPOCH': '4'})  # 27 training images / 6
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report['straight']['code'] == 0
    # the start-up summary, and the epoch lines kept under --quiet (no top-5 with 3 classes)
    out = report['straight']['stdout']
    assert 'model: test_fbs_resnet (FBS), from random initialisation' in out
    assert f'data: {folder}: 3 classes, 27 training and 9 validation images' in out
    assert 'schedule: 2 epoch(s) of 4 steps of 6 images' in out and 'density 1 -> 0.5 over the first 1 epoch(s)' in out
    assert 'teacher: none' in out
    assert out.count('| val top-1 ') == 2 and 'top-5' not in out

    def run_state(name):
        path = str(tmp_path / name / 'train_state.safetensors')
        with safe_open(path, framework='pt') as f:
            progress = json.loads(f.metadata()['progress'])
        return (load_file(path), progress, load_file(str(tmp_path / name / 'best.safetensors')),
                (tmp_path / name / 'log.jsonl').read_text())

    straight = run_state('straight')
    assert any('running_var' in k for k in straight[0]) and any(k.startswith('optimizer.') for k in straight[0])
    where = dict(forward='epoch 2/2, step 3/4', step='epoch 1/2, step 3/4', validation='epoch 1/2, step 4/4')
    for point, runs in report.items():
        if point == 'straight':
            continue
        stopped, resumed = runs['interrupted'], runs['resumed']
        assert stopped['code'] == 130, (point, stopped)
        if point == 'twice':  # the second Ctrl-C stops mid-step: nothing saved after the end of epoch 1
            assert 'stopped mid-step; the state saved at epoch 2/2, step 0/4 stays in' in stopped['stderr']
        else:
            assert f'stopped at {where[point]}; state saved to' in stopped['stderr'], (point, stopped['stderr'])
        assert f'continue with: dynvit finetune {" ".join(args)} --data {folder} --out {tmp_path / point} --resume' \
            in stopped['stderr']
        assert resumed['code'] == 0 and ', resumed from ' in resumed['stdout'], (point, resumed)
        tensors, progress, best, log = run_state(point)
        assert tensors.keys() == straight[0].keys()
        differ = [k for k in tensors if not torch.equal(tensors[k], straight[0][k])]
        assert not differ, (point, differ[:5])
        assert progress == straight[1] and log == straight[3], point
        assert all(torch.equal(best[k], straight[2][k]) for k in best), point


def test_cli_ctrl_c_during_start_up_is_one_line(folder, tmp_path):
    """Ctrl-C while the command loads (Python, torch, timm, the data) prints one line and exits 130,
    at any moment: no traceback, and never a half-imported library that fails later."""
    import signal
    import time
    p = subprocess.Popen([sys.executable, '-m', 'dynvit', 'finetune', 'test_fbs_resnet', '--data', str(folder),
                          '--out', str(tmp_path / 'run')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    time.sleep(1.5)  # in the imports, also on a loaded machine (tried by hand at 0.05 to 3 s: one line each time)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() in ('dynvit finetune: interrupted', 'dynvit: interrupted'), err
    assert not (tmp_path / 'run' / 'train_state.safetensors').exists()


def test_cli_finetune_and_eval_say_what_they_do(folder, tmp_path):
    """finetune: a training set smaller than one batch names a batch size that fits, --help shows
    the defaults; eval names the split it scores and prints no top-5 for fewer than 6 classes."""
    from test_cli import cli
    r = cli('finetune', 'test_fbs_resnet', '--data', str(folder), '--out', str(tmp_path / 'big'), '--batch-size', '64')
    assert r.returncode == 1 and 'fewer than one batch of 64: lower the batch size (--batch-size 33 or less)' \
        in r.stderr, r.stderr
    r = _cli('finetune', '--help')  # a subprocess: no torch to load, fast
    assert '(default: 64, or a quarter of the training images' in ' '.join(r.stdout.split())
    assert '(default: 0.0005)' in r.stdout
    dynvit.save_model(dynvit.create_model('test_fbs_resnet'), str(tmp_path / 'ten.safetensors'))
    r = cli('finetune', 'test_fbs_resnet', '--checkpoint', str(tmp_path / 'ten.safetensors'), '--data', str(folder),
            '--out', str(tmp_path / 'run'), '--epochs', '1', '--batch-size', '11', '--quiet')
    assert r.returncode == 0, r.stderr
    assert f'from the file {tmp_path / "ten.safetensors"}; head reset from 10 to 3 classes' in r.stdout
    model = dynvit.create_model('test_fbs_resnet', num_classes=3)
    dynvit.save_model(model, str(tmp_path / 'm.safetensors'))
    r = cli('eval', str(tmp_path / 'm.safetensors'), '--data', str(folder), '--val-fraction', '0.25')
    assert r.returncode == 0, r.stderr
    assert (f'on {folder}, the validation split: 25% of the images of every class held out (seed 0) (9 images): '
            f'top-1') in r.stdout and 'top-5' not in r.stdout
    r = cli('eval', str(tmp_path / 'm.safetensors'), '--data', str(folder), '--val-fraction', '0.25', '--density', '1')
    assert r.returncode == 0 and ' 0.0% of the dense MACs saved' in r.stdout, r.stdout + r.stderr  # another setting
