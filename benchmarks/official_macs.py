"""MACs our runtime counts for the official DynamicViT / Evo-ViT checkpoints' configurations (their
tags' sparsity settings), next to the published numbers. No weights are needed: MACs depend on the
configuration only (top-k keeps a fixed count per image).

    python benchmarks/official_macs.py [--out benchmarks/results/official_macs.json]
"""
import argparse
import json
from pathlib import Path

import torch

import dynvit
from dynvit.models._helpers import model_input_size
from dynvit.runtime import profile

# published top-1 (%) and GFLOPs (the papers' "FLOPs" are multiply-accumulates) from the READMEs'
# model-zoo tables; Evo-ViT publishes throughput, not FLOPs
PUBLISHED = {
    'dynamicvit_256_patch16_224.official_r07_in1k': (76.53, 1.3),
    'dynamicvit_small_patch16_224.official_r07_in1k': (79.32, 2.9),
    'dynamicvit_base_patch16_224.official_r07_in1k': (81.43, 11.4),
    'evovit_tiny_patch16_224.official_in1k': (72.0, None),
    'evovit_small_patch16_224.official_in1k': (79.4, None),
    'evovit_base_patch16_224.official_in1k': (81.3, None),
    'evovit_base_patch16_384.official_in1k': (82.0, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    rows = {}
    print(f'{"model":<50}{"top-1":>7}{"published GMACs":>17}{"ours GMACs":>12}{"dense":>8}{"saved":>8}')
    for name, (top1, gmacs) in PUBLISHED.items():
        model = dynvit.create_model(name).eval()  # random weights: the counts depend on the configuration only
        c, h, w = model_input_size(model)
        with torch.no_grad():
            _, report = profile(model, torch.randn(1, c, h, w))
        rows[name] = dict(published_top1=top1, published_gmacs=gmacs, gmacs=report.mean_macs / 1e9,
                          dense_gmacs=report.dense_macs / 1e9)
        print(f'{name:<50}{top1:>7.2f}{gmacs if gmacs else "-":>17}{report.mean_macs / 1e9:>12.2f}'
              f'{report.dense_macs / 1e9:>8.2f}{1 - report.mean_macs / report.dense_macs:>8.1%}')
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == '__main__':
    main()
