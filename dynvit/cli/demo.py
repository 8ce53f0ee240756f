"""``dynvit demo``: the zoo's sparse models on bundled Fashion-MNIST test images, offline."""
import argparse
import re
from pathlib import Path
from typing import List

from ..families import spec_of_arch
from ._common import EXIT_OK, EXIT_SOME_IMAGES_FAILED, check_output, picture_suffixes, positive_int, report_skipped
from .models import kept_text

SAMPLES = Path(__file__).resolve().parents[1] / 'samples'
EXAMPLES = 'examples:\n  dynvit demo\n  dynvit demo --out /tmp/demo.png --threads 1\n  dynvit demo --images my_shirts/'


def _true_label(path: str, classes: List[str]) -> str:
    """The class named in a bundled sample's file name (``fmnist_test0000_ankle_boot.png``), else '?'."""
    slug = re.sub(r'^fmnist_test\d+_', '', Path(path).stem)
    for c in classes:
        if re.sub(r'[^a-z0-9]+', '_', c.lower()).strip('_') == slug:
            return c
    return '?'


def _zoo_models() -> List[str]:
    """The zoo's sparse models, its families' order first."""
    from ..hub.zoo import WEIGHTS_DIR, read_card, zoo_models
    names = [n for n in zoo_models() if read_card(n).get('saved_fraction_vs_own_dense', 0) > 0]
    if not names:
        raise FileNotFoundError(f'no sparse zoo weights in {WEIGHTS_DIR}; install dynvit from the repository '
                                f'(pip install -e .) or set DYNVIT_WEIGHTS to the weights/ folder')

    def order(name: str):
        spec = spec_of_arch(name)
        return (spec.order if spec else 1_000, name)

    return sorted(names, key=order)


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch
    from ..hub.zoo import read_card
    from ..predict import gather_images, predict_images
    from ..viz import prediction_grid, tiled
    from ..hub import create_model
    check_output(args.out, picture_suffixes(), '--out')
    torch.set_num_threads(args.threads)
    images, errors, skipped = gather_images(args.images or [str(SAMPLES)], recursive=args.recursive)
    report_skipped('demo', errors + skipped)
    if not images:
        raise ValueError('no image could be read')
    print(f'dynvit demo: the zoo\'s sparse models on {len(images)} Fashion-MNIST test images '
          f'({args.images and ", ".join(args.images) or "bundled with the package"}); {args.threads} CPU threads, '
          f'no network.\n')
    sections = []
    for name in _zoo_models():
        card = read_card(name)
        model = create_model(name, pretrained=True).eval()
        preds = predict_images(model, images, topk=1)
        classes = list(model.pretrained_cfg.get('label_names') or [])
        print(f'{name}: {model.sparsity_text()}; card: test top-1 {card["test_top1"]:.2%}, '
              f'{card["mean_macs"] / 1e6:.1f} MMACs/image')
        unit = 'kept'
        print(f'  {"image":<34}{"true":<13}{"predicted":<13}{"p":>5}  {unit:<30}{"MMACs":>7}{"saved":>7}')
        right = 0
        for p in preds:
            true = _true_label(p.source, classes)
            _, label, prob = p.topk[0]
            right += label == true
            print(f'  {Path(p.source).name[:33]:<34}{true[:12]:<13}{label[:12]:<13}{prob:5.2f}  {kept_text(p):<30}'
                  f'{p.macs / 1e6:7.2f}{p.saved_fraction:7.1%}')
        mean_saved = sum(p.saved_fraction for p in preds) / len(preds)
        known = sum(_true_label(p.source, classes) != '?' for p in preds)
        print(f'  {right}/{known} correct; {mean_saved:.1%} of the dense MACs saved on average\n' if known else
              f'  {mean_saved:.1%} of the dense MACs saved on average\n')
        sections.append(prediction_grid(preds[:args.per_model], size=args.size,
                                        title=f'{name}: {model.sparsity_text()}'))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tiled(sections).save(out)  # one section per model, in rows: about as wide as tall
    print(f'picture of the kept tokens and channels: {out.resolve()}')
    print('speed: dynvit bench MODEL --compare-dense; your images: dynvit predict MODEL IMAGE... --viz out.png')
    return EXIT_SOME_IMAGES_FAILED if errors else EXIT_OK


def add_parsers(add) -> None:
    p = add('demo', 'Run the zoo\'s sparse models (token and channel sparsity) on bundled Fashion-MNIST images: '
                    'predictions, kept tokens / channels and MACs saved per image, and a picture.', EXAMPLES)
    p.add_argument('--out', default='dynvit_demo.png', help='where to write the picture')
    p.add_argument('--images', nargs='+', default=None,
                   help='image files or folders instead of the bundled ones (default: the ten bundled images)')
    p.add_argument('--recursive', action='store_true', help='--images: also the images in the subfolders of folders')
    p.add_argument('--per-model', type=positive_int, default=3, help='images per model in the picture')
    p.add_argument('--size', type=positive_int, default=84, help='picture: panel height in pixels')
    p.add_argument('--threads', type=positive_int, default=2, help='CPU threads')
    p.set_defaults(func=_cmd_demo)
