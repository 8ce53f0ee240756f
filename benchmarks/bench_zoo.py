"""The zoo's table: every shipped model on Fashion-MNIST's 10,000 test images (top-1, MACs per
image, fraction saved vs its dense model) and its speed vs its dense model on the CPU (batch-1
latency, batch-32 throughput), all measured here in one run. A sparse model without a dense twin
in the zoo (FBS Lite0) is timed against itself with the sparsity off (the same network dense).

    python benchmarks/bench_zoo.py --threads 2 --out benchmarks/results/zoo_cpu.json
    python benchmarks/zoo_report.py    # the README table and docs/zoo_tradeoff.png from that file
"""
import argparse
import json
from pathlib import Path

import torch

import dynvit
from dynvit.models import dense_copy
from dynvit.data import FashionMNIST, model_transform
from dynvit.hub.zoo import WEIGHTS_DIR, read_card
from dynvit.runtime import median_latencies
from dynvit.train import evaluate
from zoo_report import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    dense_metrics = {}  # each dense model's test metrics, measured once
    for path in sorted(WEIGHTS_DIR.glob('*.safetensors')):
        name = path.name[:-len('.safetensors')]
        info = read_card(path)
        model = dynvit.create_model(name, pretrained=True).eval()
        test = FashionMNIST(None, 'test', model_transform(model))
        metrics = evaluate(model, torch.utils.data.DataLoader(test, batch_size=250), torch.device('cpu'))
        dense_name = info.get('dense_model')
        x = torch.stack([test[i][0] for i in range(32)])
        models = {'model': model}
        if dense_name:
            models['dense'] = dynvit.create_model(dense_name, pretrained=True).eval()
        elif info['saved_fraction_vs_own_dense'] > 0:  # no dense twin in the zoo: time the same network, sparsity off
            models['dense'] = dense_copy(model).eval()
        b1 = median_latencies(models, x[:1], args.rounds, 5)
        b32 = median_latencies(models, x, max(1, args.rounds // 2), 1)
        row = dict(test_top1=metrics['top1'], mean_macs=metrics['mean_macs'], saved_vs_own_dense=metrics['saved_fraction'],
                   b1_ms=b1['model'] * 1e3, b32_img_s=32 / b32['model'], dense=dense_name)
        if 'dense' in models:
            row.update(dense_macs=metrics['mean_macs'] / (1 - metrics['saved_fraction']),
                       b1_speedup=b1['dense'] / b1['model'], b32_speedup=b32['dense'] / b32['model'])
        if dense_name:
            if dense_name not in dense_metrics:
                dense_metrics[dense_name] = evaluate(models['dense'], torch.utils.data.DataLoader(
                    FashionMNIST(None, 'test', model_transform(models['dense'])), batch_size=250), torch.device('cpu'))
            row.update(dense_top1=dense_metrics[dense_name]['top1'], dense_macs=dense_metrics[dense_name]['mean_macs'])
        rows[name] = row
        versus = (f'vs {dense_name} ({row["dense_top1"]:.2%})' if dense_name else 'vs itself with sparsity off')
        print(f'{name:<45} top-1 {row["test_top1"]:.2%}  {row["mean_macs"] / 1e6:6.2f} MMACs  b1 {row["b1_ms"]:.2f} ms  '
              f'b32 {row["b32_img_s"]:.0f} img/s'
              + (f'  {versus}: {1 - row["mean_macs"] / row["dense_macs"]:.1%} fewer MACs, b1 {row["b1_speedup"]:.2f}x, '
                 f'b32 {row["b32_speedup"]:.2f}x' if 'dense' in models else ''), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(threads=args.threads, rows=rows), indent=1))
    print('\n' + markdown_table(rows))


if __name__ == '__main__':
    main()
