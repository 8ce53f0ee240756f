"""``dynvit finetune`` and ``dynvit eval``: training and evaluation on Fashion-MNIST or an image folder."""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from ._common import (
    EXIT_OK,
    apply_sparsity,
    example_family,
    fraction,
    int8_arg,
    knob_args,
    knob_example,
    knob_settings,
    maybe_int8,
    positive_int,
    report_skipped_count,
)

DEFAULT_BATCH = 64  # finetune's batch size, unless the training set is small (_fitted_batch)
_TOKENS, _CHANNELS = example_family('patches'), example_family('channels')
EXAMPLES = {
    'finetune': 'examples:\n'
                f'  dynvit finetune {_TOKENS.example} --data path/to/images --epochs 3 --out runs/mine\n'
                f'  dynvit finetune {knob_example(_TOKENS)} --data fashion-mnist --epochs 5 --out runs/fm\n'
                f'  dynvit finetune {knob_example(_CHANNELS)} --data path/to/images --gate-warmup-epochs 1 '
                '--out runs/gates\n'
                '  dynvit finetune ARCH --data path/to/images --checkpoint deit_small.pth --out runs/deit   # a dense '
                'checkpoint as the backbone\n'
                f'  dynvit finetune {_TOKENS.example} --data fashion-mnist --teacher {_CHANNELS.example} --out runs/kd\n'
                f'  torchrun --nproc_per_node 2 -m dynvit finetune {_TOKENS.example} --data fashion-mnist '
                '--out runs/ddp\n'
                f'  dynvit finetune {_TOKENS.example} --data path/to/images --epochs 3 --out runs/mine --resume   '
                '# the same command again, continued',
    'eval': 'examples:\n  dynvit eval runs/fm/best.safetensors --data fashion-mnist\n'
            f'  dynvit eval {_CHANNELS.example} --data fashion-mnist --split test\n'
            f'  dynvit eval {knob_example(_TOKENS)} --data fashion-mnist --split test --json',
}


def _model_for_data(args: argparse.Namespace, num_classes: Optional[int]):
    """The model named (or the dynvit file given) with ``--model-args`` and ``num_classes``, its
    sparsity set by the knob flags, and where its weights came from (``resolve_model``'s source);
    ``--checkpoint`` (or the file) provides the weights, the head reset the timm way when the
    classes differ; an ``arch.tag`` starts from its pretrained weights, a bare arch from scratch."""
    import torch
    from ..hub import resolve_model
    from ..models import model_input_size
    torch.manual_seed(args.seed)  # fresh parameters (heads, predictors, gates) start the same in every process
    kwargs = json.loads(args.model_args) if args.model_args else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f'--model-args must be a JSON object, got {args.model_args!r}')
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model, source = resolve_model(args.model, args.checkpoint, **kwargs)
    apply_sparsity(model, knob_settings(args))  # the knob flags: the target of a run, the setting scored
    for key in ('mean', 'std'):
        value = getattr(args, key, None)
        if value:
            model.pretrained_cfg = {**model.pretrained_cfg, key: tuple(value)}
    if getattr(args, 'img_size', None):
        if model.pretrained_cfg.get('fixed_input_size'):
            raise ValueError('--img-size is for CNNs; give a ViT its size with --model-args \'{"img_size": N}\'')
        chans = model_input_size(model)[0]
        model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (chans, args.img_size, args.img_size)}
    return model, source


def _external_teacher(args: argparse.Namespace, student):
    """``--teacher``: a pretrained model name (``arch.tag``) or a dynvit file, wrapped to read the
    student's batches."""
    from ..data import model_norm
    from ..hub import create_model, model_and_file
    from ..models import model_input_size
    from ..train import ExternalTeacher
    if args.no_distill:
        raise ValueError('--teacher and --no-distill contradict each other')
    name, file = model_and_file(args.teacher, '--teacher')
    teacher = create_model(name, pretrained=True, **({'pretrained_cfg_overlay': dict(file=file)} if file else {}))
    if teacher.num_classes != student.num_classes:
        raise ValueError(f'the teacher {args.teacher} has {teacher.num_classes} classes, the student '
                         f'{student.num_classes}')
    mean, std = model_norm(student)  # what the student's batches were normalised with
    return ExternalTeacher(teacher, mean, std, model_input_size(student)[0])


def _num_classes(args: argparse.Namespace) -> int:
    from ..data import FASHION_MNIST_CLASSES, folder_classes
    if args.data.lower().replace('_', '-') == 'fashion-mnist':
        return len(FASHION_MNIST_CLASSES)
    return len(folder_classes(args.data))


def _compress_for_training(args: argparse.Namespace, model) -> None:
    """``--prune-weights`` (magnitude masks kept through the run) or ``--autoprune`` (trained scores)."""
    from ..compress import apply_autoprune, magnitude_prune
    if args.prune_weights and args.autoprune:
        raise ValueError('--prune-weights and --autoprune are two ways of pruning the weights; choose one')
    if args.prune_weights:
        magnitude_prune(model, args.prune_weights, scope=args.prune_scope)
    if args.autoprune:  # its weight is checked with the other settings (TrainConfig)
        apply_autoprune(model)


def _sparsity_in_use(trainer) -> str:
    """What the target setting does on one image of the run (the first validation image), in the
    family's words: e.g. 'kept patch tokens per stage 137 / 96 / 67 of 196 patches, 35.5% of the
    MACs saved'."""
    import torch
    from ..runtime import profile
    model = trainer.model
    dataset = trainer.val_loader.dataset if trainer.val_loader else trainer.train_set
    level, was_training = model.sparsity_level, model.training
    try:
        model.set_sparsity_level(trainer.target).eval()
        with torch.no_grad():
            _, report = profile(model, dataset[0][0][None].to(trainer.device))
    finally:
        model.set_sparsity_level(level).train(was_training)
    kept = report.kept_text(report.images[0].kept)
    which = 'validation' if trainer.val_loader else 'training'
    return (f'{report.stage_label} {kept} of {report.total} {report.total_label}, {report.saved_fraction:.1%} of the '
            f'MACs saved on the first {which} image')


def _summary(args: argparse.Namespace, trainer, source: str, classes, resumed: bool) -> str:
    """What a run starts from (or resumes), on what data and input, for how long, towards which
    sparsity (printed at start-up)."""
    from ..data import describe_input
    model, cfg = trainer.model, trainer.config
    if resumed:
        origin = (f'resumed from {Path(args.out) / "train_state.safetensors"} at epoch {trainer.epoch + 1}/'
                  f'{cfg.epochs}, step {trainer.step}/{trainer.steps_per_epoch}')
    else:
        kind, _, what = source.partition(' ')  # resolve_model's 'random', 'file PATH', 'pretrained ARCH.TAG'
        origin = 'from ' + dict(random='random initialisation', file=f'the file {what}',
                                pretrained=f'the pretrained weights of {what}')[kind]
        had = model.pretrained_cfg.get('num_classes')
        if source != 'random' and had and had != model.num_classes:
            origin += f'; head reset from {had} to {model.num_classes} classes'
    knob, target = model.sparsity_knob, model.level_text(trainer.target)  # per stage / gate
    if cfg.sparsity_warmup_epochs > 0 and any(v < cfg.sparsity_start for v in trainer.target):
        start = model.level_text((cfg.sparsity_start,))
        sparsity = f'{knob} {start} -> {target} over the first {cfg.sparsity_warmup_epochs:g} epoch(s)'
    else:
        sparsity = f'{knob} {target} from the start'
    sparsity += f' ({model.sparsity_meaning}); at {target}: {_sparsity_in_use(trainer)}'
    if cfg.gate_warmup_epochs:
        sparsity += f'; only the sparse modules train in the first {cfg.gate_warmup_epochs} epoch(s)'
    teacher = ('none' if not cfg.distill else f'{args.teacher} (logits)' if args.teacher
               else 'the dense copy of the starting model')
    batch = f'{cfg.batch_size} images'
    if args.batch_size is None and cfg.batch_size < DEFAULT_BATCH:
        batch += f' (fitted to the {len(trainer.train_set)} training images; --batch-size sets it)'
    from ..train import WARMUP_CAP
    warmup = f'warm-up {cfg.lr_warmup_epochs:g} epoch(s)'
    if cfg.lr_warmup_epochs < cfg.warmup_epochs:
        warmup += f', capped at {WARMUP_CAP:.0%} of the run'
    rows = [('model', f'{args.model} ({model.family}), {origin}'),
            ('data', f'{args.data}: {len(classes)} classes, {len(trainer.train_set)} training and '
                     f'{len(trainer.val_loader.dataset) if trainer.val_loader else 0} validation images'),
            ('input', describe_input(model)),
            ('schedule', f'{cfg.epochs} epoch(s) of {trainer.steps_per_epoch} steps of {batch}, '
                         f'lr {cfg.lr:g} ({warmup}, cosine)'),
            ('sparsity', sparsity),
            ('teacher', teacher),
            ('out', f'{args.out} (train_state.safetensors, best.safetensors, log.jsonl)')]
    if trainer.changed_settings:
        rows.insert(0, ('changed', ', '.join(f'{_flag_of(trainer.model, k)} {a} -> {b}'
                                             for k, (a, b) in trainer.changed_settings.items())
                        + ' (--allow-changes): the run no longer reproduces an uninterrupted one'))
    return '\n'.join(f'{k:>9}: {v}' for k, v in rows)


def _flag_of(model, setting: str) -> str:
    """The command-line flag of a training setting (``TrainConfig`` field, or 'sparsity_target')."""
    from ._common import knob_options
    if setting == 'sparsity_target':
        return next((o.flag for o in knob_options() if o.knob == model.sparsity_knob), model.sparsity_knob)
    special = dict(distill='--no-distill', autoprune_weight='--autoprune', num_workers='--workers',
                   train_kwargs='--aug-scale / --no-color-jitter', min_lr_ratio='min_lr_ratio')
    return special.get(setting, '--' + setting.replace('_', '-'))


def _fitted_batch(n: int, world: int) -> int:
    """The default batch size for ``n`` training images: ``DEFAULT_BATCH``, or for fewer than four
    batches of it a quarter of the images (four steps an epoch), a multiple of the processes."""
    batch = min(DEFAULT_BATCH, max(1, n // 4))
    return max(world, batch - batch % world)


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted run: the same command with ``--resume``."""
    import shlex
    if not (Path(args.out) / 'train_state.safetensors').is_file():
        return 'no state was saved yet: run the command again to start over'
    argv = [a for a in args.argv if a != '--resume']
    prefix = 'torchrun ... -m dynvit' if int(os.environ.get('WORLD_SIZE', '1')) > 1 else 'dynvit'
    return f'continue with: {prefix} {shlex.join(argv)} --resume'


def _cmd_finetune(args: argparse.Namespace) -> int:
    import torch
    from ..data import build_datasets, skipped_files
    from ..train import SettingsChanged, TrainConfig, Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and (Path(args.out) / 'train_state.safetensors').exists():
        raise FileExistsError(f'{args.out} already holds a run; pass --resume to continue it or choose another --out')
    model, source = _model_for_data(args, _num_classes(args))
    if args.init_gates:
        model.init_sparse_modules()
    _compress_for_training(args, model)
    train_kwargs = {} if args.aug_scale is None else dict(scale=(args.aug_scale, 1.0))
    if args.no_color_jitter:
        train_kwargs['color_jitter'] = None
    train, val, classes = build_datasets(args.data, model, args.data_root, args.val_fraction, args.seed,
                                         train_kwargs, augment=not args.no_aug, skip_unreadable=args.skip_unreadable)
    report_skipped_count(args.command, args.data, skipped_files(train, val))
    if args.max_train_images and args.max_train_images < len(train):
        train = torch.utils.data.Subset(train, range(args.max_train_images))
    world = int(os.environ.get('WORLD_SIZE', '1'))
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size or _fitted_batch(len(train), world), lr=args.lr,
        sparse_lr=args.sparse_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        sparsity_start=args.sparsity_start, sparsity_warmup_epochs=args.sparsity_warmup_epochs,
        gate_warmup_epochs=args.gate_warmup_epochs, distill=not args.no_distill, l1_weight=args.l1_weight,
        autoprune_weight=args.autoprune or 0.0, autoprune_lr=args.autoprune_lr,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
        amp=args.amp, grad_clip=args.grad_clip, seed=args.seed, num_workers=args.workers, train_kwargs=train_kwargs)
    teacher = _external_teacher(args, model) if args.teacher else None
    trainer = Trainer(model, train, val, config, out_dir=args.out, class_names=classes, progress=not args.quiet,
                      teacher=teacher)
    if args.resume:
        try:
            if not trainer.resume(allow_changes=args.allow_changes):
                raise FileNotFoundError(f'nothing to resume in {args.out} (no train_state.safetensors)')
        except SettingsChanged as e:
            changed = ', '.join(f'{_flag_of(model, k)} {a} (this command: {b})' for k, (a, b) in e.changes.items())
            raise ValueError(f'the run in {args.out} was saved with {changed}: a resume with other settings does not '
                             f'reproduce the uninterrupted run; repeat the saved values, or add --allow-changes to '
                             f'continue with these') from None
        if trainer.complete:
            if trainer.rank == 0:
                print(f'the run in {args.out} is complete: {trainer.epoch} of {config.epochs} epoch(s) trained, best '
                      f'validation top-1 {trainer.best_top1:.4f} in {Path(args.out) / "best.safetensors"}; nothing '
                      f'to do. To train longer, give a larger --epochs with --resume --allow-changes (the '
                      f'learning rate then follows the longer schedule)')
            return EXIT_OK
    if trainer.rank == 0:
        print(_summary(args, trainer, source, classes, resumed=args.resume), flush=True)
    finished = False
    try:
        trainer.fit()  # Ctrl-C: the step finishes and the state is saved; main() exits 130
        finished = True
    except KeyboardInterrupt:
        if trainer.rank == 0:
            print(_resume_hint(args), file=sys.stderr, flush=True)
        raise
    finally:  # under torchrun: gloo's threads left running abort the process at exit (SIGABRT), and a
        # process tearing its group down while the other still writes its files closed the connection
        # under the other's gloo threads (SIGABRT too): every process reaches the end, then the group goes
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if finished:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    if trainer.rank == 0:
        print(f'best validation top-1 {trainer.best_top1:.4f}; model saved to {Path(args.out) / "best.safetensors"}')
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from ..data import build_datasets, describe_split, skipped_files
    from ..train import evaluate
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model_for_data(args, None)[0].eval()
    model = maybe_int8(model, args)
    _, val, classes = build_datasets(args.data, model, args.data_root, args.val_fraction, args.seed, augment=False,
                                     split=args.split, skip_unreadable=args.skip_unreadable)
    report_skipped_count(args.command, args.data, skipped_files(val))
    if len(classes) != model.num_classes:
        raise ValueError(f'the data has {len(classes)} classes, the model {model.num_classes}')
    if args.limit:
        val = torch.utils.data.Subset(val, range(min(args.limit, len(val))))
    loader = torch.utils.data.DataLoader(val, batch_size=args.batch_size, num_workers=args.workers)
    metrics = evaluate(model, loader, torch.device('cpu'), progress=not args.json and sys.stderr.isatty())
    split = describe_split(args.data, args.split, args.val_fraction, args.seed)
    if args.limit:
        split += f', its first {len(val)} images'
    if args.json:
        print(json.dumps(dict(metrics, split=split), indent=1))
    else:
        top5 = f'top-5 {metrics["top5"]:.4f}, ' if 'top5' in metrics else ''
        print(f'{args.model} on {args.data}, {split} ({metrics["images"]} images): top-1 {metrics["top1"]:.4f}, '
              f'{top5}{metrics["mean_macs"] / 1e9:.4f} GMACs per image, '
              f'{metrics["saved_fraction"]:.1%} of the dense MACs saved, keep rate {metrics["keep_rate"]:.3f}')
    return EXIT_OK


def add_parsers(add) -> None:
    """Adds ``finetune`` and ``eval``; ``add(name, help, examples)`` makes a subparser."""
    def data_args(p: argparse.ArgumentParser, training: bool) -> None:
        p.add_argument('model', help='a model name, or a dynvit .safetensors file')
        p.add_argument('--data', required=True, help="'fashion-mnist' or an image folder (root/<class>/<image>)")
        p.add_argument('--data-root', default=None, help='Fashion-MNIST IDX folder (default: the Debian package\'s)')
        p.add_argument('--val-fraction', type=float, default=0.1,
                       help='validation share held out of the training images (stratified, seeded)')
        p.add_argument('--img-size', type=int, default=None,
                       help='CNNs: input size (default: the model\'s; ViTs take img_size in --model-args)')
        p.add_argument('--checkpoint', default=None,
                       help='weights to start from (dense or sparse; timm, DeiT, dynvit) (default: an arch.tag\'s '
                            'pretrained weights; a bare arch starts from random ones)')
        p.add_argument('--model-args', default=None,
                       help='JSON constructor arguments, e.g. \'{"img_size": 28}\' (default: none)')
        p.add_argument('--mean', type=float, nargs='+', default=None, help='normalisation mean (default: model cfg)')
        p.add_argument('--std', type=float, nargs='+', default=None, help='normalisation std (default: model cfg)')
        if training:
            p.add_argument('--batch-size', type=positive_int, default=None,
                           help=f'global batch size (default: {DEFAULT_BATCH}, or a quarter of the training images '
                                f'when they are fewer than {4 * DEFAULT_BATCH}: four steps an epoch)')
        else:
            p.add_argument('--batch-size', type=positive_int, default=DEFAULT_BATCH, help='batch size')
        p.add_argument('--workers', type=int, default=0, help='DataLoader worker processes (0: load in the main process)')
        p.add_argument('--threads', type=int, default=0, help='CPU threads (default: torch\'s)')
        p.add_argument('--seed', type=int, default=0, help='seed of the validation split, data order, augmentation and new parameters')
        p.add_argument('--skip-unreadable', action='store_true',
                       help='leave out image files that cannot be read (checked when the folder is listed; '
                            'default: stop and name them)')

    p = add('finetune', 'Fine-tune a dynamic model on Fashion-MNIST or an image folder (resumable; torchrun for DDP).',
            EXAMPLES['finetune'])
    data_args(p, training=True)
    p.add_argument('--out', required=True, help='run folder: train_state.safetensors, best.safetensors, log.jsonl')
    p.add_argument('--resume', action='store_true',
                   help='continue the run in --out with the same settings (the same command again)')
    p.add_argument('--allow-changes', action='store_true',
                   help='--resume with settings other than the saved run\'s (e.g. a larger --epochs to train a '
                        'finished run longer); the run then no longer reproduces an uninterrupted one')
    knob_args(p, target=True)
    p.add_argument('--epochs', type=positive_int, default=10, help='passes over the training images')
    p.add_argument('--lr', type=float, default=5e-4, help='peak learning rate (AdamW)')
    p.add_argument('--sparse-lr', type=float, default=None, help='lr of keep predictors / gates (default: --lr)')
    p.add_argument('--weight-decay', type=float, default=0.05, help='AdamW weight decay (not on norms and biases)')
    p.add_argument('--warmup-epochs', type=float, default=1.0,
                   help='linear learning-rate warm-up, then cosine decay; at most a fifth of the run '
                        '(dynvit.train.WARMUP_CAP)')
    p.add_argument('--label-smoothing', type=float, default=0.0, help='cross-entropy label smoothing')
    p.add_argument('--sparsity-start', type=fraction, default=1.0, help='keep ratio / density the schedule starts at')
    p.add_argument('--sparsity-warmup-epochs', type=float, default=0.0, help='epochs to reach the target sparsity')
    p.add_argument('--gate-warmup-epochs', type=int, default=0,
                   help='models with learned selection: epochs training only the keep predictors / gates')
    p.add_argument('--init-gates', action='store_true',
                   help='start the sparse modules from the loaded weights without data where the family can '
                        '(channel gates: magnitude pruning, as for a dense checkpoint without gates), e.g. from a '
                        'file trained with sparsity off')
    p.add_argument('--prune-weights', type=float, default=0.0, metavar='FRACTION',
                   help='magnitude-prune this fraction of the block weights first; the masks hold through the run')
    p.add_argument('--prune-scope', default='global', choices=['global', 'layer'],
                   help='--prune-weights: one threshold over all layers, or the fraction in every layer')
    p.add_argument('--autoprune', type=float, default=0.0, metavar='WEIGHT',
                   help='AutoPrune the block weights: trained scores with this regulariser weight (e.g. 5)')
    p.add_argument('--autoprune-lr', type=float, default=1e-2, help='learning rate of the AutoPrune scores')
    p.add_argument('--l1-weight', type=float, default=1e-3, help='channel gates: L1 on their saliencies')
    p.add_argument('--no-distill', action='store_true', help='no distillation from the dense teacher')
    p.add_argument('--distill-weight', type=float, default=0.5, help='weight of the soft-target KL term')
    p.add_argument('--distill-temperature', type=float, default=1.0, help='its temperature T (scaled by T^2)')
    p.add_argument('--teacher', help='distil (logits) from this pretrained model (arch.tag or dynvit file) '
                                     'instead of the dense copy of the starting model (default: that copy)')
    p.add_argument('--amp', default='auto', choices=['auto', 'off', 'bf16', 'fp16'],
                   help='mixed precision (auto: bf16 on CUDA, off on the CPU)')
    p.add_argument('--grad-clip', type=float, default=None, help='clip the gradient norm to this (default: no clipping)')
    p.add_argument('--aug-scale', type=float, default=None,
                   help='smallest random-resized-crop area (default: timm\'s, 0.08)')
    p.add_argument('--no-color-jitter', action='store_true', help='no colour jitter in the training augmentation')
    p.add_argument('--no-aug', action='store_true', help='no training augmentation')
    p.add_argument('--max-train-images', type=int, default=0, help='use the first N training images (default: 0, all)')
    p.add_argument('--quiet', action='store_true', help='no progress bar (the start-up summary and the per-epoch lines stay)')
    p.set_defaults(func=_cmd_finetune)

    p = add('eval', 'Top-1/top-5 and the MACs per image of a model on Fashion-MNIST or an image folder.',
            EXAMPLES['eval'])
    data_args(p, training=False)
    p.add_argument('--split', default='val', choices=['val', 'test'],
                   help="'val': the held-out part of the training data; 'test': Fashion-MNIST's test set")
    knob_args(p)
    p.add_argument('--limit', type=int, default=0, help='evaluate the first N images')
    int8_arg(p)
    p.add_argument('--json', action='store_true', help='print the metrics as JSON')
    p.set_defaults(func=_cmd_eval)
