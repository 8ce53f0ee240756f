"""How FBS EfficientNet-Lite0 starts at density < 1 from its dense Fashion-MNIST fine-tune, before any
gate training: fresh random gates vs gates started as magnitude pruning (``init_gates``), top-1 on
the first 500 held-out validation images (no test image).

    bash benchmarks/zoo_fashion_mnist.sh       # step lite0_dense makes runs/zoo/lite0_dense
    python benchmarks/gate_init_lite0.py --threads 2
"""
import argparse

import torch

import dynvit
from dynvit.data import build_datasets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='runs/zoo/lite0_dense/best.safetensors')
    ap.add_argument('--images', type=int, default=500)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = dynvit.load_model(args.model, density=1.0).eval()
    _, val, _ = build_datasets('fashion-mnist', model, val_fraction=0.1, seed=0, augment=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val, range(args.images)), batch_size=100)
    x, y = map(torch.cat, zip(*loader))

    def top1(density: float) -> float:
        model.set_sparsity(density=density)
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    print(f'dense: {top1(1.0):.1%}')
    for blk in model.gated_blocks:
        for g in blk.gates():
            g.reset_parameters()
    fresh = {d: top1(d) for d in (0.9, 0.75, 0.5)}
    model.init_gates()
    pruned = {d: top1(d) for d in (0.9, 0.75, 0.5)}
    for d in fresh:
        print(f'density {d}: fresh gates {fresh[d]:.1%}, magnitude-pruning start {pruned[d]:.1%}')


if __name__ == '__main__':
    main()
