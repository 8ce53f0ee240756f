"""Ships a trained model into the zoo: ``weights/<arch>.<tag>.safetensors`` and its card.

    python benchmarks/zoo_ship.py RUN_DIR/best.safetensors --tag fmnist_dense --dense-of ... \\
        --command "bash benchmarks/zoo_fashion_mnist.sh"

    python benchmarks/zoo_ship.py --recard --macs-from benchmarks/results/zoo_cpu.json   # MACs re-counted

Stores the weights in fp16 when the test top-1 does not change by more than 0.05 points (else
fp32), evaluates the shipped file on all 10,000 Fashion-MNIST test images and on the fixed
500-image sample in ``tests/fixtures`` (which the tests re-check), writes the card with a
JSON block the tests compare with the file, and the zoo's index ``weights/zoo.json``.
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
from dynvit.hub.zoo import read_card, write_index
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


def _sentence(text: str) -> str:
    """The first sentence of a docstring, on one line."""
    flat = ' '.join((text or '').split())
    return flat.split('. ')[0].rstrip('.')


def _short(value) -> str:
    """A setting as JSON with its floats to 4 significant digits (0.4225, not 0.4225000000000001)."""
    if isinstance(value, float):
        return f'{value:.4g}'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_short(v) for v in value) + ']'
    return json.dumps(value)


def _recipe(tr: dict) -> str:
    """One line from the card's ``training`` block (TrainConfig as saved with the weights)."""
    if not tr:
        return 'not recorded (no training: the weights of its dense model with the sparsity switched on)'
    parts = [f'{tr["epochs"]} epochs, batch {tr["batch_size"]}, AdamW lr {tr["lr"]:g}'
             + (f' (keep predictors / gates {tr["sparse_lr"]:g})' if tr.get('sparse_lr') else '')
             + f', weight decay {tr["weight_decay"]:g}, {tr["warmup_epochs"]:g} warm-up epochs then cosine',
             f'label smoothing {tr["label_smoothing"]:g}']
    if tr.get('distill'):
        how = ', '.join(f'{k} {tr[key]:g}' for k, key in (('weight', 'distill_weight'), ('T', 'distill_temperature'))
                        if tr.get(key) is not None)
        parts.append('distilled' + (f' ({how})' if how else ''))
    if tr.get('sparsity_warmup_epochs'):
        parts.append(f'sparsity from {tr["sparsity_start"]:g} to the target over {tr["sparsity_warmup_epochs"]:g} epochs')
    if tr.get('gate_warmup_epochs'):
        parts.append(f'{tr["gate_warmup_epochs"]:g} epoch(s) training only the gates first')
    return '; '.join(parts)


def card_text(card: dict) -> str:
    """The card: what the network is, its sparsity, data, accuracy and cost, where it sits against
    its dense twin (or which zoo models it is the twin of), the recipe, and the JSON the tests read."""
    import timm
    from dynvit.models import all_sparsity_args
    name, args = card['name'], card['model_args']
    sparsity = ', '.join(f'{k}={_short(v)}' for k, v in sorted(args.items()) if k in all_sparsity_args())
    c, h, w = card['input_size']
    lines = [
        f'- network: {_sentence(timm.models.model_entrypoint(card["architecture"]).__doc__)} '
        f'(`{card["architecture"]}`); this file: {sparsity or "no sparsity settings"}; input {c} x {h} x {w} '
        f'(Fashion-MNIST upscaled from 28 px where larger), {args.get("num_classes")} classes',
        f'- test top-1 {card["test_top1"]:.2%}, top-5 {card["test_top5"]:.2%}',
        f'- {card["mean_macs"] / 1e6:.2f} MMACs per image, {card["saved_fraction_vs_own_dense"]:.1%} saved vs the '
        f'same network without sparsification',
    ]
    dense = card.get('dense_model')
    if dense and (ROOT / 'weights' / f'{dense}.md').is_file():
        d = read_card(ROOT / 'weights' / f'{dense}.safetensors')
        lines.append(f'- against its dense twin `{dense}` ({d["test_top1"]:.2%}, {d["mean_macs"] / 1e6:.2f} MMACs): '
                     f'{(card["test_top1"] - d["test_top1"]) * 100:+.2f} points, '
                     f'{1 - card["mean_macs"] / d["mean_macs"]:.1%} of its MACs saved')
    elif not dense:
        twins = sorted(p.stem for p in (ROOT / 'weights').glob('*.safetensors')
                       if read_card(p).get('dense_model') == name)
        if twins:
            lines.append('- the dense twin of ' + ', '.join(f'`{n}`' for n in twins))
    lines += [
        f'- recipe: {_recipe(card.get("training"))}',
        f'- stored as {card["storage"]}, {card["size_bytes"] / 1e6:.1f} MB, sha256 `{card["sha256"]}`',
        f'- made by: `{card["command"]}` (seed {card["seed"]}; the script\'s comments give each step\'s start '
        f'and teacher)',
    ]
    return (f'# {name}\n\n{card["dataset"]} (test: all 10,000 images; no test image was used for any choice). '
            f'Load it offline with `dynvit.create_model("{name}", pretrained=True)`.\n\n' + '\n'.join(lines)
            + f'\n\n```json\n{json.dumps(card, indent=1)}\n```\n')


def recard(bench: str = '') -> None:
    """Re-writes every card's text from its JSON block (the weights stay as they are). With
    ``bench`` (``bench_zoo.py``'s results, all 10,000 test images), the MACs per image and the
    fraction saved come from there first: the MACs of what runs, when the counting of a family
    changed; the test top-1 must not have moved (the weights and the logits did not change)."""
    rows = json.loads(Path(bench).read_text())['rows'] if bench else {}
    for md in sorted((ROOT / 'weights').glob('*.md')):
        card = read_card(md.with_suffix('.safetensors'))
        row = rows.get(card['name'])
        if row:
            if abs(row['test_top1'] - card['test_top1']) > 1e-4:
                raise SystemExit(f'{card["name"]}: test top-1 {row["test_top1"]} in {bench}, {card["test_top1"]} in '
                                 f'its card: the weights or the model changed; ship it again instead')
            card.update(mean_macs=int(round(row['mean_macs'])),
                        saved_fraction_vs_own_dense=round(row['saved_vs_own_dense'], 6))
        md.write_text(card_text(card))
        print(f'wrote {md}')
    print(f'index: {write_index()}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('model', nargs='?', help='the run\'s best.safetensors')
    ap.add_argument('--tag')
    ap.add_argument('--recard', action='store_true', help='only re-write every card\'s text from its JSON')
    ap.add_argument('--macs-from', default='', metavar='BENCH_JSON',
                    help='--recard: take the MACs per image and the fraction saved from bench_zoo.py\'s results')
    ap.add_argument('--dense', default=None, help='name (arch.tag) of its dense model in the zoo')
    ap.add_argument('--command', help='how the run was made (recorded in the card)')
    ap.add_argument('--arch', default=None,
                    help='store under this registered architecture (the same network under its current name)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    if args.recard:
        return recard(args.macs_from)
    if not (args.model and args.tag and args.command):
        ap.error('give the run\'s model file, --tag and --command (or --recard)')
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
        saved_fraction_vs_own_dense=round(full['saved_fraction'], 6), dense_model=args.dense,
        sha256=hashlib.sha256(out.read_bytes()).hexdigest(), size_bytes=out.stat().st_size,
        training=info['extra'].get('trained_with'), command=args.command, seed=args.seed,
    )
    text = card_text(card)
    (ROOT / 'weights' / f'{name}.md').write_text(text)
    print(text)
    print(f'index: {write_index()}')


if __name__ == '__main__':
    sys.exit(main())
