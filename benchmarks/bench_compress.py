"""Static compression on the zoo's Fashion-MNIST ViTs (issue 9): test top-1 on all 10,000 test
images, size on disk, MACs per image, batch-1 latency and batch-32 throughput on the CPU against
the dense ViT (sizes: float models stored in fp16, INT8 ones as their quantized state dict), for the dense ViT, each dynamic model, + INT8, + structured pruning and their
combination; and AutoPrune against magnitude pruning at equal weight sparsity. All timed side by
side in one run (the models take turns within each round).

    bash benchmarks/compress_fashion_mnist.sh          # the fine-tuned pruned models (runs/compress)
    python benchmarks/bench_compress.py --threads 2 --out benchmarks/results/compress_cpu.json
"""
import argparse
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Tuple

import torch

import dynvit
from dynvit.compress import quantize_int8, sparsity
from dynvit.hub import save_pruned
from dynvit.data import FashionMNIST, model_transform
from dynvit.hub.zoo import WEIGHTS_DIR
from dynvit.runtime import median_latencies
from dynvit.train import evaluate

DENSE = 'dynamicvit_pico_patch4_28.fmnist_dense'


def _file(name: str) -> str:
    return str(WEIGHTS_DIR / f'{name}.safetensors')


def _sizes(model: torch.nn.Module, int8: bool) -> Tuple[int, int]:
    """(bytes, gzip-compressed bytes) on disk: float models as fp16 dynvit files (``save_pruned``,
    the zoo's storage), INT8 ones as their quantized state dict written by ``torch.save``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'm')
        if int8:
            torch.save(model.state_dict(), path)
        else:
            save_pruned(model, path, dtype='fp16')
        with open(path, 'rb') as f:
            data = f.read()
    return len(data), len(gzip.compress(data, 6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--runs', default='runs/compress', help='the folder of compress_fashion_mnist.sh')
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    configs = {  # label: (weights file, INT8)
        'dense ViT': (_file(DENSE), False),
        'dense ViT + INT8': (_file(DENSE), True),
        'dense ViT + structured': (str(runs / 'vit_dense_struct' / 'best.safetensors'), False),
        'dense ViT + structured + INT8': (str(runs / 'vit_dense_struct' / 'best.safetensors'), True),
        'DynamicViT 0.65': (_file('dynamicvit_pico_patch4_28.fmnist_kr065'), False),
        'DynamicViT 0.5': (_file('dynamicvit_pico_patch4_28.fmnist_kr05'), False),
        'Evo-ViT 0.5': (_file('evovit_pico_patch4_28.fmnist_kr05'), False),
        'DynamicViT 0.5 + INT8': (_file('dynamicvit_pico_patch4_28.fmnist_kr05'), True),
        'Evo-ViT 0.5 + INT8': (_file('evovit_pico_patch4_28.fmnist_kr05'), True),
        'DynamicViT 0.5 + structured': (str(runs / 'vit_kr05_struct' / 'best.safetensors'), False),
        'DynamicViT 0.5 + structured + INT8': (str(runs / 'vit_kr05_struct' / 'best.safetensors'), True),
        'AutoPrune (1 epoch)': (str(runs / 'vit_autoprune' / 'best.safetensors'), False),
        'magnitude, same sparsity (1 epoch)': (str(runs / 'vit_magnitude' / 'best.safetensors'), False),
    }
    models, rows = {}, {}
    test = x = None
    for label, (path, int8) in configs.items():
        if not os.path.isfile(path):
            print(f'{label}: {path} missing (run benchmarks/compress_fashion_mnist.sh); skipped')
            continue
        model = dynvit.load_model(path).eval()
        if test is None:
            test = FashionMNIST(None, 'test', model_transform(model))
            x = torch.stack([test[i][0] for i in range(32)])
        if int8:
            model = quantize_int8(model)
        metrics = evaluate(model, torch.utils.data.DataLoader(test, batch_size=250), torch.device('cpu'))
        models[label] = model
        size, gz = _sizes(model, int8)
        rows[label] = dict(file=path, int8=int8, test_top1=metrics['top1'], mean_macs=metrics['mean_macs'],
                           size_bytes=size, gzip_bytes=gz,
                           params=sum(p.numel() for p in model.parameters()),
                           weight_sparsity=None if int8 else sparsity(model).overall)
        print(f'{label:<38} top-1 {metrics["top1"]:.2%}  {metrics["mean_macs"] / 1e6:6.2f} MMACs  '
              f'{rows[label]["size_bytes"] / 1e6:.2f} MB', flush=True)
    b1 = median_latencies(models, x[:1], args.rounds, 5)
    b32 = median_latencies(models, x, args.rounds, 3)
    base = rows['dense ViT']
    for label, r in rows.items():
        r.update(b1_ms=b1[label] * 1e3, b32_img_s=32 / b32[label], b1_speedup=b1['dense ViT'] / b1[label],
                 b32_speedup=b32['dense ViT'] / b32[label], top1_delta=r['test_top1'] - base['test_top1'],
                 saved_vs_dense=1 - r['mean_macs'] / base['mean_macs'])
    if args.out:
        Path(args.out).write_text(json.dumps(dict(threads=args.threads, torch=torch.__version__,
                                                  quantized_engine=torch.backends.quantized.engine, rows=rows),
                                             indent=1))
    print('\n' + markdown_table(rows))


def markdown_table(rows: dict) -> str:
    lines = ['| model | test top-1 | size on disk | MMACs / image | saved vs dense | batch-1 latency | '
             'batch-32 throughput |', '|---|---|---|---|---|---|---|']
    for label, r in rows.items():
        size = f'{r["size_bytes"] / 1e6:.2f} MB'
        if r.get('weight_sparsity'):
            size += f' ({r["gzip_bytes"] / 1e6:.2f} MB gzip, {r["weight_sparsity"]:.0%} zeros)'
        lines.append(f'| {label} | {r["test_top1"]:.2%} ({r["top1_delta"] * 100:+.2f}) | {size} | '
                     f'{r["mean_macs"] / 1e6:.1f} | {r["saved_vs_dense"]:.1%} | {r["b1_ms"]:.2f} ms '
                     f'({r["b1_speedup"]:.2f}×) | {r["b32_img_s"]:.0f} img/s ({r["b32_speedup"]:.2f}×) |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
