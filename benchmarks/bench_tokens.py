"""The five token methods against dense DeiT on the CPU, side by side in one run (issues 18, 28).

ToMe at r = 8 and 13 (merges r tokens in every block; arXiv:2210.09461), EViT at keep rate 0.7
(blocks 3/6/9 keep the most attended tokens and fuse the rest; arXiv:2202.07800), DynamicViT at
0.7 (learned keep predictors, cumulative 0.7 / 0.49 / 0.34; arXiv:2106.02034) and Evo-ViT at its
default 0.5 (slow-fast update from block 4; arXiv:2108.01390) and ATS at budget 0.55 (blocks 3..11 each
sample 108 points of their tokens' significance cdf and keep the tokens hit, a count per image;
arXiv:2111.15667; its batch runs packed). All share the dense model's
backbone weights (random: the tokens each block computes do not depend on them, so neither does
the speed, except ToMe's matching and DynamicViT's predictors, which run whatever the weights;
ATS's counts do depend on them: random weights attend almost evenly, so its images keep nearly the
same number here, and its budget is set to save about 35%); ToMe, EViT and ATS are made with
``dynvit.apply`` from the timm model itself. The input is low-frequency noise (``smooth_images``).

    python benchmarks/bench_tokens.py --threads 2 --out benchmarks/results/tokens_small_cpu.json
"""
import copy

import timm

import dynvit
from dynvit.runtime import smooth_images
from dynvit.models.dynamic_vit import checkpoint_filter_fn as dynamicvit_filter
from dynvit.models.evo_vit import checkpoint_filter_fn as evovit_filter

from common import compare, deit_title, parse_args, print_rows, print_tokens_per_block, save


def main() -> None:
    args = parse_args(__doc__, keep_ratio=0.7, values={'--ats-budget': 0.55})
    dense = timm.create_model(f'deit_{args.size}_patch16_224').eval()
    models = {'dense': dense}
    for r in (8, 13):
        models[f'tome_r{r}'] = dynvit.apply(copy.deepcopy(dense), 'tome', r=r).eval()
    models[f'evit_{args.keep_ratio}'] = dynvit.apply(dense, 'evit', keep_ratio=args.keep_ratio).eval()
    models[f'ats_{args.ats_budget}'] = dynvit.apply(copy.deepcopy(dense), 'ats', budget=args.ats_budget).eval()
    for label, arch, kwargs, filter_fn in (
            (f'dyvit_{args.keep_ratio}', 'dynamicvit', dict(keep_ratio=args.keep_ratio), dynamicvit_filter),
            ('evo_0.5', 'evovit', dict(keep_ratio=0.5), evovit_filter)):
        model = dynvit.create_model(f'{arch}_{args.size}_patch16_224', **kwargs).eval()
        model.load_state_dict(filter_fn(dense.state_dict(), model))  # the same backbone weights
        models[label] = model
    xb = smooth_images(args.batch, (3, 224, 224))

    rows = compare(models, xb, args.rounds, args.runs_b1, args.runs_large)
    title = deit_title(args, 'ToMe / EViT / ATS / DynamicViT / Evo-ViT')
    print_rows(title, rows, args.batch)
    print_tokens_per_block(rows)
    if args.out:
        save(args.out, title, vars(args), rows)


if __name__ == '__main__':
    main()
