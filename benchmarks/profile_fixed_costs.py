"""Where the time of a batch-1 forward goes: torch.profiler over the dense model and the sparse
ones, the self CPU time of every op attributed to the part of the model that ran it (patch
embedding, transformer blocks, keep predictors, the selection between blocks: top-k, sort,
gathers; the aux bookkeeping: decisions, keep probabilities, MACs; the head).

'sparse' is ``model(x)``; 'sparse + aux' is ``model(x, return_aux=True)``, which runs the aux
bookkeeping that every top-k forward ran before it was skipped for plain calls: the before and
after of that change.

    python benchmarks/profile_fixed_costs.py --threads 2 --out benchmarks/results/profile_fixed_costs.txt
"""
import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict

import timm
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

import dynvit

PARTS = {'patch_embed': 'embed', 'blocks': 'blocks', 'score_predictor': 'predictors', 'norm': 'head',
         'fc_norm': 'head', 'head': 'head', 'head_drop': 'head'}


def label(model: nn.Module) -> list:
    """Wraps the model's parts in profiler ranges (hooks), returning the handles."""
    handles = []
    for name, child in model.named_children():
        part = PARTS.get(name)
        if part is None:
            continue
        # the model iterates its block and predictor lists itself: hook their members
        for module in (child.children() if isinstance(child, (nn.Sequential, nn.ModuleList)) else [child]):
            scope = {}

            def pre(_m, _args, part=part, scope=scope):
                scope['r'] = record_function(f'part::{part}')
                scope['r'].__enter__()

            def post(_m, _args, _out, scope=scope):
                scope.pop('r').__exit__(None, None, None)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def attribute(prof) -> Dict[str, float]:
    """Self CPU microseconds per part; ops outside every part are 'selection and glue'."""
    out: Dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.name.startswith('part::') or e.name == 'model':
            continue
        part, p = 'selection and glue', e.cpu_parent
        while p is not None:
            if p.name.startswith('part::'):
                part = p.name[len('part::'):]
                break
            p = p.cpu_parent
        out[part] += e.self_cpu_time_total
    return out


def run(model: nn.Module, x: torch.Tensor, aux: bool, iters: int) -> Dict[str, float]:
    handles = label(model)
    with torch.inference_mode():
        for _ in range(3):
            model(x, return_aux=True) if aux else model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                with record_function('model'):
                    model(x, return_aux=True) if aux else model(x)
    for h in handles:
        h.remove()
    return {k: v / iters / 1e3 for k, v in attribute(prof).items()}  # ms per forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--iters', type=int, default=5, help='profiled forwards per model per round')
    ap.add_argument('--rounds', type=int, default=6, help='rounds the models take turns in')
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    deit = timm.create_model('deit_small_patch16_224')
    dvit = dynvit.create_model('dynamicvit_small_patch16_224', keep_ratio=0.7)
    dvit.load_state_dict(deit.state_dict(), strict=False)
    zoo = dynvit.create_model('dynamicvit_pico_patch4_28.fmnist_kr05', pretrained=True)
    cases = [('DeiT-S 224 px', dvit.eval(), torch.randn(1, 3, 224, 224)),
             ('zoo DynamicViT 0.5, 28 px', zoo.eval(), torch.randn(1, 1, 28, 28))]
    lines = [f'batch 1, {args.threads} threads, ms per forward (self CPU time of the ops in each part, '
             f'torch.profiler, {args.rounds} rounds of {args.iters} forwards, the models taking turns)']
    for title, sparse, x in cases:
        variants = {'dense': (sparse.dense_copy().eval(), False), 'sparse': (sparse, False),
                    'sparse + aux': (sparse, True)}
        rows = {k: defaultdict(float) for k in variants}
        for _ in range(args.rounds):  # interleaved, so that the columns share the machine's noise
            for k, (model, aux) in variants.items():
                for part, ms in run(model, x, aux, args.iters).items():
                    rows[k][part] += ms / args.rounds
        parts = sorted({p for r in rows.values() for p in r}, key=lambda p: -rows['sparse'].get(p, 0))
        lines.append(f'\n{title}')
        lines.append(f'{"part":<22}' + ''.join(f'{k:>14}' for k in rows))
        for p in parts:
            lines.append(f'{p:<22}' + ''.join(f'{r.get(p, 0.0):>14.3f}' for r in rows.values()))
        lines.append(f'{"total":<22}' + ''.join(f'{sum(r.values()):>14.3f}' for r in rows.values()))
    text = '\n'.join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
    main()
