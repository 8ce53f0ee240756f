"""Ships a trained model into the zoo: ``weights/<arch>.<tag>.safetensors`` and its card.

    python benchmarks/zoo_ship.py RUN_DIR/best.safetensors --tag fmnist_dense --dense-of ... \\
        --command "bash benchmarks/zoo_fashion_mnist.sh"

Stores the weights in fp16 when the test top-1 does not change by more than 0.05 points (else
fp32), evaluates the shipped file on all 10,000 Fashion-MNIST test images and on the fixed
500-image sample in ``tests/fixtures`` (which the tests re-check), and writes the card with a
JSON block the tests compare with the file.
"""
import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import dynvit
from dynvit.data import FashionMNIST, model_transform
from dynvit.hub.files import read_dynvit_metadata, save_file_atomic
from dynvit.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / 'tests' / 'fixtures' / 'fashion_mnist_test500.npz'


class _Sample(torch.utils.data.Dataset):
    def __init__(self, transform):
        d = np.load(SAMPLE)
        self.images, self.labels, self.transform = d['images'], d['labels'].astype(np.int64), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def accuracy(path: str, dataset_fn) -> dict:
    model = dynvit.load_model(path).eval()
    loader = torch.utils.data.DataLoader(dataset_fn(model_transform(model)), batch_size=250)
    return evaluate(model, loader, torch.device('cpu'))


def restamp(src: str, dst: str, half: bool, arch: str) -> None:
    """``src`` written to ``dst``: tensors in fp16 if ``half``, the architecture named ``arch``."""
    meta = dict(read_dynvit_metadata(src), architecture=arch)
    tensors = {k: (v.half() if half and v.is_floating_point() else v) for k, v in load_file(src).items()}
    raw = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in meta.items()}
    save_file_atomic(tensors, dst, raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('model', help='the run\'s best.safetensors')
    ap.add_argument('--tag', required=True)
    ap.add_argument('--dense', default=None, help='name (arch.tag) of its dense model in the zoo')
    ap.add_argument('--command', required=True, help='how the run was made (recorded in the card)')
    ap.add_argument('--arch', default=None,
                    help='store under this registered architecture (the same network under its current name)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = read_dynvit_metadata(args.model)
    arch = args.arch or meta['architecture']
    name = f'{arch}.{args.tag}'
    out = ROOT / 'weights' / f'{name}.safetensors'
    out.parent.mkdir(exist_ok=True)
    test = lambda tf: FashionMNIST(None, 'test', tf)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        full, half = str(Path(tmp) / 'full.safetensors'), str(Path(tmp) / 'half.safetensors')
        restamp(args.model, full, False, arch)
        restamp(args.model, half, True, arch)
        full32, full16 = accuracy(full, test), accuracy(half, test)
        use_half = abs(full16['top1'] - full32['top1']) <= 0.0005
        shutil.copyfile(half if use_half else full, out)
    full = full16 if use_half else full32
    sample = accuracy(str(out), lambda tf: _Sample(tf))
    info = read_dynvit_metadata(str(out))
    card = dict(
        name=name, dataset='Fashion-MNIST', architecture=info['architecture'], model_args=info['model_args'],
        input_size=info['pretrained_cfg'].get('input_size'), mean=info['pretrained_cfg'].get('mean'),
        std=info['pretrained_cfg'].get('std'), storage='fp16' if use_half else 'fp32',
        test_top1=round(full['top1'], 4), test_top5=round(full['top5'], 4),
        sample500_top1=round(sample['top1'], 4), mean_macs=int(round(full['mean_macs'])),
        saved_fraction_vs_own_dense=round(full['saved_fraction'], 4), dense_model=args.dense,
        sha256=hashlib.sha256(out.read_bytes()).hexdigest(), size_bytes=out.stat().st_size,
        training=info['extra'].get('trained_with'), command=args.command, seed=args.seed,
    )
    text = (f'# {name}\n\n{card["dataset"]} (test: all 10,000 images; no test image was used for any choice). '
            f'Load it offline with `dynvit.create_model("{name}", pretrained=True)`.\n\n'
            f'- test top-1 {card["test_top1"]:.2%}, top-5 {card["test_top5"]:.2%}\n'
            f'- {card["mean_macs"] / 1e6:.2f} MMACs per image, {card["saved_fraction_vs_own_dense"]:.1%} saved vs the '
            f'same network without sparsification\n- stored as {card["storage"]}, {card["size_bytes"] / 1e6:.1f} MB, '
            f'sha256 `{card["sha256"]}`\n- made by: `{args.command}` (seed {args.seed})\n\n'
            f'```json\n{json.dumps(card, indent=1)}\n```\n')
    (ROOT / 'weights' / f'{name}.md').write_text(text)
    print(text)


if __name__ == '__main__':
    sys.exit(main())
