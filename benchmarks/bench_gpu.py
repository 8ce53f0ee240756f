"""The GPU run: correctness on the device, then every family against timm's dense model on every backend.

Checks (each recorded passed / failed with its numbers):
  * DynamicViT: the gathered (top-k) execution equals the masked one with the same decisions;
  * device logits equal CPU logits for every family: fp32 (TF32 off) within 1e-3 with the same
    tokens / channels kept; bf16 within 5% of the logit range with the same top-1 on at least
    95% of the images (given the fp32 decisions where the family takes them).

Speed: per width (DeiT-S, DeiT-B: timm's model against DynamicViT/0.7, Evo-ViT/0.5, EViT 0.7 and
ToMe r=13 with its weights) and ResNet-18 (timm's) against FBS ResNet-18 at density 0.5; at batch
1, 64 and 256; bf16 and fp32 (TF32 off); executed eager, as CUDA graphs (``dynvit.CudaGraphModel``),
compiled (``dynvit.export.compile_model``: inductor, whole graph, dynamic batch) and compiled
then replayed as CUDA graphs. Every model of a (width, dtype, backend, batch) cell is timed in
turns in one run; medians, and ratios to timm's dense model in the same cell. Per model the MACs
each image executed, and a ``torch.profiler`` breakdown (device time by op, kernels per forward)
of one eager bf16 forward at batch 64.

Cells run in order of importance (DeiT-S bf16 first) until the time budget is spent; the rest
are recorded as skipped. Every failure (capture, compile, a check) is recorded with its full
traceback; the results file is rewritten after every cell. Prints the table at the end.

    bash benchmarks/gpu.sh                                   # on a CUDA machine: into benchmarks/results/gpu.json
    python benchmarks/bench_gpu.py --device cpu --quick      # the same code on the CPU, tiny models, seconds
"""
import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn

import dynvit
from dynvit.backends import error_line, on_backend
from dynvit.runtime import smooth_images

DTYPES = {'bf16': torch.bfloat16, 'fp32': torch.float32}
# (label, architecture, sparsity arguments): the settings of the GPU issue's table
TOKEN_FAMILIES = [('DynamicViT/0.7', 'dynamicvit', dict(keep_ratio=0.7)), ('Evo-ViT/0.5', 'evovit', dict(keep_ratio=0.5)),
                  ('EViT 0.7', 'evit', dict(keep_ratio=0.7)), ('ToMe r=13', 'tome', dict(r=13))]
# the models that take fixed decisions: from the aux of a pass, in the form their forward takes
GIVEN = {'DynamicViT/0.7': lambda aux: [d.float() for d in aux.decisions], 'FBS d=0.5': lambda aux: aux.indices}
QUICK = {'dynamicvit': 'test_dynamicvit', 'evovit': 'test_evovit', 'evit': 'test_evit', 'tome': 'test_tome'}


def groups(widths: List[str], quick: bool) -> Dict[str, Dict[str, nn.Module]]:
    """Per group, the dense model first, then the sparse models with its weights (random)."""
    out = {}
    for width in widths:
        if quick:  # the same families, tiny; the dense network is the first one's with sparsity off
            sparse = {label: dynvit.create_model(QUICK[arch], **({} if arch == 'tome' else kwargs))
                      for label, arch, kwargs in TOKEN_FAMILIES}
            dense = next(iter(sparse.values())).dense_copy()
        else:
            dense = timm.create_model(f'deit_{width}_patch16_224')
            sparse = {}
            for label, arch, kwargs in TOKEN_FAMILIES:
                model = dynvit.create_model(f'{arch}_{width}_patch16_224', **kwargs)
                model.load_state_dict(dense.state_dict(), strict=False)  # the backbone's weights
                sparse[label] = model
        out[f'DeiT-{width[0].upper()}'] = {'dense': dense, **sparse}
    fbs = dynvit.create_model('test_fbs_resnet' if quick else 'fbs_resnet18', density=0.5)
    cnn = fbs.dense_copy() if quick else timm.create_model('resnet18')
    if not quick:
        fbs.load_state_dict(cnn.state_dict(), strict=False)
    out['ResNet-18'] = {'dense': cnn, 'FBS d=0.5': fbs}
    return {g: {k: m.eval() for k, m in models.items()} for g, models in out.items()}


def images(model: nn.Module, batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Smooth random images (``dynvit.runtime.smooth_images``) for ``model``, seeded by the batch size."""
    x = smooth_images(batch, dynvit.model_input_size(model), torch.Generator().manual_seed(batch))
    return x.to(device=device, dtype=dtype)


def failure(e: BaseException) -> Dict[str, str]:
    return dict(error=error_line(e), traceback=traceback.format_exc())


def checks(models: Dict[str, Dict[str, nn.Module]], device: str, quick: bool) -> List[dict]:
    """Device = CPU for every family (see the module docstring)."""
    out = []
    first = next(iter(models.values()))
    dvit = first['DynamicViT/0.7']
    try:
        x = images(dvit, 4 if quick else 16, device, torch.float32)
        with torch.no_grad():
            gathered, aux = dvit.to(device)(x, return_aux=True)
            masked = dvit(x, decisions=[d.float() for d in aux.decisions])
        diff = (gathered - masked).abs().max().item()
        out.append(dict(check='DynamicViT gathered = masked (fp32)', max_abs_diff=diff, passed=diff < 1e-3))
    except Exception as e:
        out.append(dict(check='DynamicViT gathered = masked (fp32)', passed=False, **failure(e)))
    finally:
        dvit.cpu()
    sparse = {name: m for group in (first, models['ResNet-18']) for name, m in group.items() if name != 'dense'}
    for name, model in sparse.items():
        try:
            x = images(model, 4 if quick else 32, 'cpu', torch.float32)
            with torch.no_grad():
                ref, ref_aux = model.cpu()(x, return_aux=True)
                fp32, aux = model.to(device)(x.to(device), return_aux=True)
                # bf16 rounding flips near-tied choices (random keep predictors and gates score many
                # tokens and channels alike): the bf16 pass gets the fp32 pass's decisions where the
                # model takes them
                given = {} if name not in GIVEN else dict(decisions=[None if d is None else d.to(device)
                                                                     for d in GIVEN[name](ref_aux)])
                bf16 = model.to(torch.bfloat16)(x.to(device, torch.bfloat16), **given).float().cpu()
            same = all(torch.equal(a.cpu(), b) for a, b in zip(aux.kept_masks, ref_aux.kept_masks))
            d32 = (fp32.cpu() - ref).abs().max().item()
            d16 = (bf16 - ref).abs().max().item() / max(1e-6, (ref.max() - ref.min()).item())
            top1 = (bf16.argmax(1) == ref.argmax(1)).float().mean().item()
            out.append(dict(check=f'{name}: {device} fp32 = CPU fp32', max_abs_diff=d32, same_choices=same,
                            passed=d32 < 1e-3 and same))
            out.append(dict(check=f'{name}: {device} bf16 = CPU fp32' + (' (same decisions)' if given else ''),
                            rel_diff=d16, top1_agreement=top1, passed=d16 < 0.05 and top1 >= 0.95))
        except Exception as e:
            out.append(dict(check=f'{name}: {device} = CPU', passed=False, **failure(e)))
        finally:
            model.float().cpu()
    return out


def timed(fns: Dict[str, Callable[[], torch.Tensor]], device: str, seconds: float) -> Dict[str, float]:
    """Median seconds per call; the calls take turns, round by round, for about ``seconds``."""
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    per_call = {}
    for k, fn in fns.items():  # one untimed call each, then one timed to size the rounds
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        per_call[k] = time.perf_counter() - t0
    runs = max(2, min(10, int(seconds / 5 / max(1e-6, sum(per_call.values())))))
    for _ in range(5):
        for k, fn in fns.items():
            fn()
            sync()
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def executed_gmacs(model: nn.Module, x: torch.Tensor) -> Optional[float]:
    """Mean GMACs per image this forward executed (None for timm's dense model: its count is the
    dense one of its twins)."""
    if not hasattr(model, 'sparsity_config'):
        return None
    with torch.inference_mode():
        _, aux = model(x, return_aux=True)
    return aux.executed_macs.double().mean().item() / 1e9


def profile_models(models: Dict[str, nn.Module], device: str, dtype: torch.dtype, batch: int) -> Dict[str, dict]:
    """Per model: kernels (device ops) per forward and the ops taking the most device time."""
    from torch.profiler import ProfilerActivity, profile
    activity = ProfilerActivity.CUDA if device == 'cuda' else ProfilerActivity.CPU
    out = {}
    for name, model in models.items():
        try:
            m = model.to(device, dtype)
            x = images(m, batch, device, dtype)
            with torch.inference_mode():
                for _ in range(2):
                    m(x)
                if device == 'cuda':
                    torch.cuda.synchronize()
                with profile(activities=[activity]) as prof:
                    for _ in range(3):
                        m(x)
                    if device == 'cuda':
                        torch.cuda.synchronize()
            rows = []
            for e in prof.key_averages():
                t = getattr(e, 'self_device_time_total', 0) if device == 'cuda' else e.self_cpu_time_total
                if t > 0:
                    rows.append(dict(op=e.key, calls=e.count // 3, ms=t / 3e3))
            rows.sort(key=lambda r: -r['ms'])
            kernels = sum(e.count for e in prof.events() if device != 'cuda' or e.device_type.name == 'CUDA') / 3
            out[name] = dict(dtype=str(dtype).split('.')[-1], batch=batch, ms_total=sum(r['ms'] for r in rows),
                             events_per_forward=kernels, top=rows[:15])
        except Exception as e:
            out[name] = failure(e)
        finally:
            model.float().cpu()
    return out


def cells(args: argparse.Namespace, names: List[str]) -> List[Tuple[str, str, str, int]]:
    """(group, dtype, backend, batch) in order of importance: DeiT-S and ResNet-18 before DeiT-B,
    bf16 (where the targets are) before fp32, and within a dtype every group on CUDA graphs and
    eager before any compiling (compiling every model takes minutes: a budget spent there still
    leaves both groups measured)."""
    order = []
    for group in names:
        for dtype in args.dtypes:
            for backend in args.backends:
                for batch in args.batches:
                    order.append((group, dtype, backend, batch))
    rank = {g: i for i, g in enumerate(sorted(names, key=lambda g: g == 'DeiT-B'))}
    return sorted(order, key=lambda c: (c[0] == 'DeiT-B', args.dtypes.index(c[1]), args.backends.index(c[2]),
                                        rank[c[0]], c[3]))


def table(result: dict) -> str:
    """Sparse / dense speed ratios per group, dtype and model (columns: backend and batch), and
    the best backend per batch against the dense model's best."""
    lines = []
    rows = [r for r in result['speed'] if 'ms' in r]
    for group in dict.fromkeys(r['group'] for r in result['speed']):
        for dtype in dict.fromkeys(r['dtype'] for r in result['speed'] if r['group'] == group):
            cell = [r for r in rows if r['group'] == group and r['dtype'] == dtype]
            cols = list(dict.fromkeys((r['backend'], r['batch']) for r in cell))
            best_cols = sorted({b for _, b in cols})
            head = [f'{b[:10]} b{n}' for b, n in cols] + [f'best b{n}' for n in best_cols]
            lines.append(f'\n{group} {dtype}: time of timm dense / time of the model (>1: faster), same backend; '
                         'best: the fastest backend of each against the dense model\'s fastest')
            body = []
            for model in dict.fromkeys(r['model'] for r in cell):
                by = {(r['backend'], r['batch']): r for r in cell if r['model'] == model}
                vals = [f'{by[c]["vs_dense"]:.2f}x' if c in by and 'vs_dense' in by[c] else
                        'failed' if any(f['model'] == model and (f['backend'], f['batch']) == c
                                        for f in result['speed'] if 'error' in f) else '-' for c in cols]
                for n in best_cols:  # the model's best backend against the dense model's best
                    mine = [r for r in cell if r['model'] == model and r['batch'] == n]
                    dense = [r for r in cell if r['model'] == 'dense' and r['batch'] == n]
                    if mine and dense:
                        b = min(mine, key=lambda r: r['ms'])
                        vals.append(f'{min(r["ms"] for r in dense) / b["ms"]:.2f}x {b["backend"]}')
                    else:
                        vals.append('-')
                body.append([model] + vals)
            widths = [max(len(v) for v in col) + 2 for col in zip(['model'] + head, *body)]
            for row in [['model'] + head] + body:
                lines.append(f'{row[0]:<{widths[0]}}' + ''.join(f'{v:>{w}}' for v, w in zip(row[1:], widths[1:])))
    fails = [r for r in result['speed'] if 'error' in r]
    if fails:
        lines.append(f'\n{len(fails)} failure(s), tracebacks in the results file:')
        lines += [f'  {r["group"]} {r["dtype"]} {r["backend"]} b{r["batch"]} {r["model"]}: {r["error"]}' for r in fails]
    skipped = [r for r in result['speed'] if r.get('skipped')]
    if skipped:
        lines.append(f'\n{len(skipped)} cell(s) skipped: {skipped[0]["skipped"]}')
    return '\n'.join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--quick', action='store_true', help='tiny models, batches 1 and 4 (to test the script)')
    ap.add_argument('--widths', nargs='+', default=['small', 'base'], choices=['tiny', 'small', 'base'])
    ap.add_argument('--batches', type=int, nargs='+', default=[1, 64, 256])
    ap.add_argument('--dtypes', nargs='+', default=['bf16', 'fp32'], choices=list(DTYPES))
    ap.add_argument('--backends', nargs='+', default=['cuda_graph', 'eager', 'compiled', 'compiled_cuda_graph'])
    ap.add_argument('--compile-backend', default='inductor', help="torch.compile's backend ('eager': graph "
                                                                  'capture only, fast; for testing the script)')
    ap.add_argument('--seconds-per-cell', type=float, default=1.5, help='timing per cell (after warm-up)')
    ap.add_argument('--budget', type=float, default=330, help='seconds; cells beyond it are recorded as skipped')
    ap.add_argument('--no-profile', action='store_true')
    ap.add_argument('--out', default='benchmarks/results/gpu.json')
    args = ap.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('bench_gpu: no CUDA device here; run it on a GPU machine (benchmarks/gpu.sh), or --device cpu --quick '
              'to test the script')
        return 0
    args.backends = [b for b in args.backends if 'cuda_graph' not in b or args.device == 'cuda']
    if args.quick:
        args.widths, args.batches, args.seconds_per_cell = ['small'], [1, 4], 0.05
    start = time.time()
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for flag in ('recompile_limit', 'cache_size_limit'):  # graphs per model class: widths x dtypes x (b1, dynamic)
        if hasattr(torch._dynamo.config, flag):
            setattr(torch._dynamo.config, flag, 64)
    models = groups(args.widths, args.quick)
    result = dict(device=torch.cuda.get_device_name() if args.device == 'cuda' else platform.processor() or 'cpu',
                  torch=torch.__version__, timm=timm.__version__, dynvit=dynvit.__version__, args=vars(args),
                  checks=checks(models, args.device, args.quick), speed=[], profiles={})
    for c in result['checks']:
        print(('ok   ' if c['passed'] else 'FAIL ') + json.dumps({k: v for k, v in c.items() if k != 'traceback'}))
    out = Path(args.out)

    def save() -> None:
        result['seconds'] = time.time() - start
        if not args.quick:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))

    if not args.no_profile:  # the first group and the CNN pair: where the kernels go
        for group in (next(iter(models)), 'ResNet-18'):
            result['profiles'][group] = profile_models(models[group], args.device, torch.bfloat16,
                                                       4 if args.quick else 64)
        save()
    ready: Dict[Tuple[str, str, str], nn.Module] = {}  # (model, dtype, backend) -> runner, compiled once
    for group, dtype_name, backend, batch in cells(args, list(models)):
        if time.time() - start > args.budget:
            result['speed'].append(dict(group=group, dtype=dtype_name, backend=backend, batch=batch,
                                        skipped=f'time budget ({args.budget:.0f} s) spent'))
            continue
        dtype = DTYPES[dtype_name]
        for key in [k for k in ready if k[1] != dtype_name]:  # the other dtype's graphs hold its weights' memory
            del ready[key]
        fns, gmacs = {}, {}
        with torch.inference_mode():
            for name, model in models[group].items():
                key = (f'{group}/{name}', dtype_name, backend)
                try:
                    m = model.to(args.device, dtype)
                    x = images(m, batch, args.device, dtype)
                    if key not in ready:
                        kwargs = dict(backend=args.compile_backend) if 'compiled' in backend else {}
                        ready[key] = on_backend(m, backend, **kwargs)
                    runner = ready[key]
                    runner(x)
                    fns[name] = (lambda r, x: lambda: r(x))(runner, x)
                    gmacs[name] = executed_gmacs(m, x)
                except Exception as e:  # recorded with its traceback; the rest goes on
                    result['speed'].append(dict(group=group, model=name, dtype=dtype_name, backend=backend,
                                                batch=batch, **failure(e)))
                    print(f'{group} {dtype_name} {backend} b{batch} {name}: FAILED {failure(e)["error"]}', flush=True)
            times = timed(fns, args.device, args.seconds_per_cell)
        for name, t in times.items():
            row = dict(group=group, model=name, dtype=dtype_name, backend=backend, batch=batch, ms=t * 1e3,
                       images_per_s=batch / t, gmacs_per_image=gmacs[name])
            if 'dense' in times:
                row['vs_dense'] = times['dense'] / t
            result['speed'].append(row)
            print(f'{group:<10}{dtype_name:<6}{backend:<21}b{batch:<5}{name:<16}{row["ms"]:9.3f} ms'
                  f'{row["images_per_s"]:10.0f} img/s' + (f'  {row["vs_dense"]:.2f}x' if 'vs_dense' in row else ''),
                  flush=True)
        save()
        if args.device == 'cuda':
            torch.cuda.empty_cache()
    save()
    print(table(result))
    if not args.quick:
        print(f'written: {out} ({result["seconds"]:.0f} s)')
    return 0 if all(c['passed'] for c in result['checks']) else 1


if __name__ == '__main__':
    sys.exit(main())
