"""Speed where models are deployed: each sparse model against the same dense network on the same
backend (eager PyTorch, torch.compile with inductor, ONNX Runtime), all models of a backend
interleaved with every other model and backend in one run per batch size; medians and ratios.
Also every model against timm's eager dense model, and the logits of each backend against the
eager ones.

Suites: 'deit' (DeiT-S at 224 px: timm's weights in DynamicViT-S/0.7 and Evo-ViT-S/0.5; the
same-backend baseline is each model's dense copy, the network at keep ratio 1.0), 'zoo' (the
shipped Fashion-MNIST ViTs against their dense copies).

    python benchmarks/bench_deploy.py --suite deit --threads 2 --out benchmarks/results/deploy_deit_cpu.json
    python benchmarks/bench_deploy.py --suite zoo --threads 2 --out benchmarks/results/deploy_zoo_cpu.json
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict

import timm
import torch
import torch.nn as nn

import dynvit
from dynvit.export import compile_model, load_onnx, to_onnx
from dynvit.runtime import median_latencies


def deit_models() -> Dict[str, nn.Module]:
    timm_dense = timm.create_model('deit_small_patch16_224').eval()
    sparse = {
        'dynamicvit_0.7': dynvit.create_model('dynamicvit_small_patch16_224', keep_ratio=0.7),
        'evovit_0.5': dynvit.create_model('evovit_small_patch16_224', keep_ratio=0.5),
    }
    for m in sparse.values():
        m.load_state_dict(timm_dense.state_dict(), strict=False)  # the same backbone weights
        m.eval()
    return {'dense': sparse['dynamicvit_0.7'].dense_copy().eval(), **sparse}


def zoo_models() -> Dict[str, nn.Module]:
    names = [n for n in dynvit.list_models(pretrained=True) if '.fmnist_kr' in n]
    models = {n.split('.')[0].split('_')[0] + '.' + n.split('.')[1]: dynvit.create_model(n, pretrained=True).eval()
              for n in names}
    # one same-backend dense baseline per family (its network at keep ratio 1.0)
    dense = {}
    for k, m in models.items():
        dense.setdefault(f'dense.{k.split(".")[0]}', m.dense_copy().eval())
    return {**dense, **models}


def deployed(name: str, model: nn.Module, backend: str, batch: int, folder: str) -> nn.Module:
    if backend == 'eager':
        return model
    if backend == 'compile':
        return compile_model(model, dynamic_batch=False)  # static shapes: one graph per batch size
    return load_onnx(to_onnx(model, f'{folder}/{name}_{batch}.onnx', batch_size=batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--suite', default='deit', choices=['deit', 'zoo'])
    ap.add_argument('--backends', nargs='+', default=['eager', 'compile', 'ort'])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--runs-b1', type=int, default=5)
    ap.add_argument('--runs-large', type=int, default=1)
    ap.add_argument('--out', default='')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = deit_models() if args.suite == 'deit' else zoo_models()
    size = models[next(iter(models))].pretrained_cfg['input_size']
    xs = {1: torch.randn(1, *size), args.batch: torch.randn(args.batch, *size)}
    with torch.inference_mode():
        macs = {k: m(xs[1], return_aux=True)[1].macs.item() for k, m in models.items()}
    results = {'threads': args.threads, 'torch': torch.__version__, 'timm': timm.__version__, 'suite': args.suite,
               'machine': platform.processor() or platform.machine(), 'macs': macs}
    if args.suite == 'deit':  # the reference every backend is also compared with: timm's eager DeiT-S
        models['timm_dense'] = timm.create_model('deit_small_patch16_224').eval()
        macs['timm_dense'] = macs['dense']
    rows: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for batch, x in xs.items():
            t0 = time.perf_counter()
            torch._dynamo.reset()  # one batch size's graphs at a time (the recompile limit counts them all)
            runnable, diffs = {}, {}
            for backend in args.backends:
                for k, m in models.items():
                    if k == 'timm_dense' and backend != 'eager':
                        continue
                    runnable[f'{backend}:{k}'] = deployed(k, m, backend, batch, folder)
                    with torch.inference_mode():  # compiles here
                        diffs[f'{backend}:{k}'] = (runnable[f'{backend}:{k}'](x) - m(x)).abs().max().item()
            setup = time.perf_counter() - t0
            times = median_latencies(runnable, x, args.rounds, args.runs_b1 if batch == 1 else args.runs_large)
            rows[str(batch)] = dict(ms={k: v * 1e3 for k, v in times.items()}, max_abs_diff=diffs, setup_s=setup)
            print(f'batch {batch} done ({setup:.0f} s compile / export)', flush=True)
    results['rows'] = rows
    print(_table(args.backends, rows, macs))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


def _table(backends, rows: Dict[str, Dict], macs: Dict[str, float]) -> str:
    """Per backend and model: ms per batch, the ratio to the dense model on the same backend, and
    (DeiT suite) to timm's eager DeiT-S, every number of a batch size from one interleaved run."""
    batches = list(rows)
    reference = 'eager:timm_dense' if 'eager:timm_dense' in rows[batches[0]]['ms'] else None
    lines = [f'{"backend":<9}{"model":<24}{"MMACs":>9}' + ''.join(f'{"b" + b + " ms":>11}{"vs dense":>10}'
                                                                  for b in batches)
             + (''.join(f'{"b" + b + " vs timm eager":>18}' for b in batches) if reference else '')]
    for backend in backends:
        for k in macs:
            key = f'{backend}:{k}'
            if key not in rows[batches[0]]['ms']:
                continue
            family_dense = 'dense' if 'dense' in macs else f'dense.{k.split(".")[0]}'
            dense = f'{backend}:' + (k if k.startswith('dense') or k == 'timm_dense' else family_dense)
            ms = [rows[b]['ms'] for b in batches]
            cells = ''.join(f'{m[key]:>11.2f}{m[dense] / m[key]:>9.2f}x' for m in ms)
            if reference:
                cells += ''.join(f'{m[reference] / m[key]:>17.2f}x' for m in ms)
            lines.append(f'{backend:<9}{k:<24}{macs[k] / 1e6:>9.1f}{cells}')
    diff = max(v for b in batches for k, v in rows[b]['max_abs_diff'].items() if not k.startswith('eager'))
    lines.append(f'max |logits - eager logits| over the other backends: {diff:.2e}')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
