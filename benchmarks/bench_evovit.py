"""Dense DeiT vs Evo-ViT on the CPU, side by side in one run.

Evo-ViT at its default setting: half of the patches get the full update from block 4 on,
re-ranked before blocks 4 and 8, placeholders updated through a representative token. Also
the released code's behaviour (no representative token) and the layer-wise schedule (re-ranked
before every block from 4 on). The same random backbone weights in all models; the number of
tokens each block computes does not depend on the weights, so neither does the speed.

    python benchmarks/bench_evovit.py --threads 2 --out benchmarks/results/evovit_small_cpu.json
"""
import timm
import torch

import dynvit
from dynvit.models.evo_vit import checkpoint_filter_fn

from common import compare, deit_title, parse_args, print_rows, print_tokens_per_block, save


def main() -> None:
    args = parse_args(__doc__, keep_ratio=0.5)
    dense = timm.create_model(f'deit_{args.size}_patch16_224').eval()
    variants = {
        'evo': dict(),
        'evo_release': dict(representative_token=False),
        'evo_layer': dict(select_loc=range(4, 12)),
    }
    models = {'dense': dense}
    for label, kwargs in variants.items():
        model = dynvit.create_model(f'evovit_{args.size}_patch16_224', keep_ratio=args.keep_ratio, **kwargs).eval()
        model.load_state_dict(checkpoint_filter_fn(dense.state_dict(), model))  # same backbone weights
        models[label] = model
    xb = torch.randn(args.batch, 3, 224, 224)

    rows = compare(models, xb, args.rounds, args.runs_b1, args.runs_large)
    title = deit_title(args, f'Evo-ViT/{args.keep_ratio}')
    print_rows(title, rows, args.batch)
    print_tokens_per_block(rows)
    if args.out:
        save(args.out, title, vars(args), rows)


if __name__ == '__main__':
    main()
