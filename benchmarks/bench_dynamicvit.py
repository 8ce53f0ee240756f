"""Dense DeiT vs DynamicViT (top-k and threshold mode) on the CPU, side by side in one run.

Random weights are fine for speed: top-k keeps a fixed count per stage, and threshold mode is
calibrated to the same average keep rate on the benchmark batch. Prints medians and ratios,
and writes them as JSON.

    python benchmarks/bench_dynamicvit.py --threads 2 --out benchmarks/results/dynamicvit_small_cpu.json
"""
import argparse
import json
import platform
from pathlib import Path

import timm
import torch

import dynvit
from dynvit.runtime import median_latencies, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--size', default='small', choices=['tiny', 'small', 'base'])
    ap.add_argument('--keep-ratio', type=float, default=0.7)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--batch', type=int, default=32, help='large batch size for throughput')
    ap.add_argument('--rounds', type=int, default=20, help='rounds of turns between the models')
    ap.add_argument('--runs-b1', type=int, default=5, help='timed batch-1 forwards per model per round')
    ap.add_argument('--runs-large', type=int, default=1, help='timed large-batch forwards per model per round')
    ap.add_argument('--out', type=str, default='')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = timm.create_model(f'deit_{args.size}_patch16_224').eval()
    topk = dynvit.create_model(f'dynamicvit_{args.size}_patch16_224', keep_ratio=args.keep_ratio).eval()
    topk.load_state_dict(dense.state_dict(), strict=False)  # same backbone weights
    threshold = dynvit.create_model(f'dynamicvit_{args.size}_patch16_224', keep_ratio=args.keep_ratio).eval()
    threshold.load_state_dict(topk.state_dict())
    xb = torch.randn(args.batch, 3, 224, 224)
    x1 = xb[:1]
    threshold.calibrate_threshold(xb)
    threshold.mode = 'threshold'
    models = {'dense': dense, 'topk': topk, 'threshold': threshold}

    reports = {k: profile(m, xb)[1] for k, m in models.items()}
    b1 = median_latencies(models, x1, args.rounds, args.runs_b1)
    bl = median_latencies(models, xb, max(1, args.rounds // 2), args.runs_large)

    rows = {}
    for k in models:
        r = reports[k]
        kept = [sum(img.kept_tokens[s] for img in r.images) / len(r.images) for s in range(len(r.images[0].kept_tokens))]
        rows[k] = dict(
            gmacs=r.mean_macs / 1e9,
            saved_fraction=r.saved_fraction,
            mean_kept_tokens=[round(v, 1) for v in kept],
            b1_latency_ms=b1[k] * 1e3,
            b1_speedup=b1['dense'] / b1[k],
            throughput_img_s=args.batch / bl[k],
            throughput_ratio=bl['dense'] / bl[k],
        )
    title = (f'DeiT-{args.size[0].upper()} vs DynamicViT/{args.keep_ratio}, {args.threads} CPU threads, fp32, '
             f'torch {torch.__version__}, timm {timm.__version__}')
    print(title)
    print(f'{"model":<10} {"GMACs":>6} {"saved":>6} {"kept/stage":>18} {"b1 ms":>8} {"b1 x":>6} '
          f'{"b" + str(args.batch) + " img/s":>10} {"x":>6}')
    for k, r in rows.items():
        kept = '/'.join(f'{v:.0f}' for v in r['mean_kept_tokens']) or '-'
        print(f'{k:<10} {r["gmacs"]:>6.2f} {r["saved_fraction"]:>6.1%} {kept:>18} {r["b1_latency_ms"]:>8.1f} '
              f'{r["b1_speedup"]:>6.2f} {r["throughput_img_s"]:>10.2f} {r["throughput_ratio"]:>6.2f}')
    print(f'threshold mode: thresholds {[round(t, 4) for t in threshold.threshold]}, kept tokens per image at the '
          f'last stage range {min(i.kept_tokens[-1] for i in reports["threshold"].images)}-'
          f'{max(i.kept_tokens[-1] for i in reports["threshold"].images)}')
    print(f'threshold vs top-k throughput: {rows["threshold"]["throughput_img_s"] / rows["topk"]["throughput_img_s"]:.2f}')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(
            title=title, args=vars(args), machine=platform.processor() or platform.machine(), results=rows), indent=1))


if __name__ == '__main__':
    main()
