"""Dense DeiT vs DynamicViT (top-k and threshold mode) on the CPU, side by side in one run.

Random weights are fine for speed: top-k keeps a fixed count per stage, and threshold mode is
calibrated to the same average keep rate on the benchmark batch. Prints medians and ratios,
and writes them as JSON.

    python benchmarks/bench_dynamicvit.py --threads 2 --out benchmarks/results/dynamicvit_small_cpu.json
"""
import timm
import torch

import dynvit
from dynvit.runtime import profile

from common import compare, deit_title, parse_args, print_rows, save


def main() -> None:
    args = parse_args(__doc__, keep_ratio=0.7)
    dense = timm.create_model(f'deit_{args.size}_patch16_224').eval()
    topk = dynvit.create_model(f'dynamicvit_{args.size}_patch16_224', keep_ratio=args.keep_ratio).eval()
    topk.load_state_dict(dense.state_dict(), strict=False)  # same backbone weights
    threshold = dynvit.create_model(f'dynamicvit_{args.size}_patch16_224', keep_ratio=args.keep_ratio).eval()
    threshold.load_state_dict(topk.state_dict())
    xb = torch.randn(args.batch, 3, 224, 224)
    threshold.calibrate_threshold(xb)
    threshold.mode = 'threshold'
    models = {'dense': dense, 'topk': topk, 'threshold': threshold}

    rows = compare(models, xb, args.rounds, args.runs_b1, args.runs_large)
    title = deit_title(args, f'DynamicViT/{args.keep_ratio}')
    print_rows(title, rows, args.batch)
    kept_last = [img.kept[-1] for img in profile(threshold, xb)[1].images]
    print(f'threshold mode: thresholds {[round(t, 4) for t in threshold.threshold]}, kept tokens per image at the '
          f'last stage range {min(kept_last)}-{max(kept_last)}')
    print(f'threshold vs top-k throughput: {rows["threshold"]["throughput_img_s"] / rows["topk"]["throughput_img_s"]:.2f}')
    if args.out:
        save(args.out, title, vars(args), rows)


if __name__ == '__main__':
    main()
