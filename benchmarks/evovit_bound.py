"""How close Evo-ViT-S gets to the batch-1 bound of its token schedule, on the CPU.

The bound is a plain timm DeiT-S that simply keeps the first 100 tokens from block 4 on
(no ranking, no representative token, no class-attention rows): the same tokens per block as
Evo-ViT-S with nothing else. Also times one block at 197 and at 100 tokens, and one block run
step by step for the class-attention row.

    python benchmarks/evovit_bound.py --threads 2
"""
import argparse

import timm
import torch
import torch.nn as nn

import dynvit
from dynvit.layers import block_forward_with_cls_attention
from dynvit.models.evo_vit import checkpoint_filter_fn
from dynvit.runtime import median_latencies


class CutDeiT(nn.Module):
    """DeiT that keeps its first ``keep`` tokens before block ``start`` and pools them."""

    def __init__(self, deit: nn.Module, start: int = 4, keep: int = 100) -> None:
        super().__init__()
        self.deit, self.start, self.keep = deit, start, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.deit
        x = m._pos_embed(m.patch_embed(x))
        for i, block in enumerate(m.blocks):
            if i == self.start:
                x = x[:, :self.keep]
            x = block(x)
        return m.head(m.norm(x)[:, 1:].mean(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = timm.create_model('deit_small_patch16_224').eval()
    evo = dynvit.create_model('evovit_small_patch16_224').eval()
    evo.load_state_dict(checkpoint_filter_fn(dense.state_dict(), evo))
    x = torch.randn(1, 3, 224, 224)
    t = median_latencies({'dense': dense, 'bound': CutDeiT(dense), 'evo': evo}, x, args.rounds, 5)
    print(f'batch 1, {args.threads} threads: dense {t["dense"] * 1e3:.1f} ms, bound {t["bound"] * 1e3:.1f} ms '
          f'({t["dense"] / t["bound"]:.2f}x), Evo-ViT-S {t["evo"] * 1e3:.1f} ms ({t["dense"] / t["evo"]:.2f}x)')
    block = dense.blocks[3]
    row_block = _Fn(block_forward_with_cls_attention, block)
    for n in (197, 100):
        tokens = torch.randn(1, n, dense.embed_dim)
        b = median_latencies({'stock': _Fn(block), 'with class-attention row': row_block}, tokens, args.rounds, 20)
        print(f'one block, {n} tokens: stock {b["stock"] * 1e3:.2f} ms, '
              f'with class-attention row {b["with class-attention row"] * 1e3:.2f} ms')


class _Fn(nn.Module):
    def __init__(self, fn, *args) -> None:
        super().__init__()
        self.fn, self.args = fn, args

    def forward(self, x: torch.Tensor):
        return self.fn(*self.args, x)


if __name__ == '__main__':
    main()
