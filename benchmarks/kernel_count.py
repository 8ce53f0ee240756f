"""Kernels per forward: the non-view ATen ops each model runs on one image, against its dense twin.

On a GPU every ATen op of the eager forward is at least one kernel launch (and a CUDA graph replays
each one), so at small batches the count, not the MACs, sets the time. This counts them on the CPU
with a ``TorchDispatchMode`` (the same ops reach the GPU): every op that reaches the dispatcher,
except views (they launch nothing), dropout and clone (inference no-ops). Random weights, 224 px,
eval mode, ``torch.no_grad``, the plain ``model(x)`` a deployment runs.

    python benchmarks/kernel_count.py --out benchmarks/results/kernel_count.json

Prints one row per model: ops per forward, the ratio to its dense twin, the target, and the ops
the sparse path adds (by name). ``--quick`` uses tiny models (for the tests and a first look).
"""
import argparse
import collections
import json
from pathlib import Path
from typing import Dict

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dynvit

# (model, its dense twin, target ratio): the settings of the GPU issue's table
MODELS = {
    'DynamicViT-S/0.7': ('dynamicvit_small_patch16_224', dict(keep_ratio=0.7), 'deit_small_patch16_224', 1.3),
    'Evo-ViT-S/0.5': ('evovit_small_patch16_224', dict(keep_ratio=0.5), 'deit_small_patch16_224', 1.4),
    'EViT-S 0.7': ('evit_small_patch16_224', dict(keep_ratio=0.7), 'deit_small_patch16_224', 1.2),
    'ToMe-S r=13': ('tome_small_patch16_224', dict(r=13), 'deit_small_patch16_224', 2.5),
    'FBS ResNet-18 d=0.5': ('fbs_resnet18', dict(density=0.5), 'resnet18', 2.5),
}
QUICK = {'DynamicViT': ('test_dynamicvit', {}, None, None), 'Evo-ViT': ('test_evovit', {}, None, None),
         'EViT': ('test_evit', {}, None, None), 'ToMe': ('test_tome', {}, None, None),
         'FBS': ('test_fbs_resnet', {}, None, None)}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that reach the dispatcher, by name, leaving out what launches no kernel
    (views, allocations without a fill, metadata changes) and what inference does not run (dropout,
    clone and detach)."""
    SKIP = ('dropout', 'native_dropout', 'clone', 'detach', 'lift_fresh', '_unsafe_view', 'empty', 'empty_like',
            'empty_strided', 'resize_', 'set_', 'alias')

    def __init__(self) -> None:
        super().__init__()
        self.ops: Dict[str, int] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or name in self.SKIP):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(model: torch.nn.Module, x: torch.Tensor) -> Dict[str, int]:
    """``{op name: times}`` of one ``model(x)``."""
    with torch.no_grad():
        model(x)  # first call: lazy caches (folded weights, ...) are not per-forward work
        with OpCounter() as counter:
            model(x)
    return dict(counter.ops)


def dense_twin(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The dense network of a quick test model (its sparsity off)."""
    return model.dense_copy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='tiny test models (seconds)')
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = {}
    for label, (name, settings, dense_name, target) in (QUICK if args.quick else MODELS).items():
        model = dynvit.create_model(name, **settings).eval()
        dense = (timm.create_model(dense_name) if dense_name else model.dense_copy()).eval()
        x = torch.randn(1, *dynvit.model_input_size(model))
        ops, base = count_ops(model, x), count_ops(dense, x)
        added = collections.Counter(ops)
        added.subtract(base)
        n, d = sum(ops.values()), sum(base.values())
        rows[label] = dict(model=name, settings=settings, dense=dense_name or f'{name} dense', ops=n, dense_ops=d,
                           ratio=n / d, target=target, added={k: v for k, v in sorted(added.items()) if v})
        mark = '' if target is None else ('  met' if n / d <= target else '  MISSED')
        print(f'{label:<22} {n:>5} ops  dense {d:>5}  {n / d:5.2f}x' +
              ('' if target is None else f'  (target <= {target}x){mark}'))
        print('    added: ' + ', '.join(f'{k} {v:+d}' for k, v in sorted(added.items(), key=lambda kv: -abs(kv[1]))
                                      if v))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(torch=torch.__version__, timm=timm.__version__, rows=rows),
                                             indent=1) + '\n')


if __name__ == '__main__':
    main()
