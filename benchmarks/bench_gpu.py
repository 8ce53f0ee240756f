"""The GPU run, ready before a GPU is lent: CUDA correctness checks, then dense vs sparse throughput.

Checks (each recorded as passed / failed with its numbers):
  * DynamicViT: the gathered (top-k) execution equals the masked one with the same decisions;
  * GPU logits equal CPU logits: fp32 (TF32 off) within 1e-3 with the same tokens / channels kept,
    bf16 within 5% of the logit range with the same top-1 on at least 95% of the images (given the
    fp32 decisions where the family takes them); DynamicViT-S, Evo-ViT-S, FBS ResNet-18.

Speed: DeiT-S dense vs DynamicViT-S/0.7 and Evo-ViT-S/0.5 (timm's DeiT-S weights), ResNet-18
dense vs FBS ResNet-18 at density 0.5, at batch 1, 64 and 256, fp32 and bf16, executed eager,
as CUDA graphs (the eager graph captured with torch.cuda.graph: the top-k paths have no host
syncs) and compiled (torch.compile, inductor, dynamic batch); every model of a (dtype, mode)
cell interleaved in one run, medians and ratios to the dense model in the same cell.

    bash benchmarks/gpu.sh                       # on a CUDA machine: all of it, into benchmarks/results/
    python benchmarks/bench_gpu.py --device cpu --quick   # the same code on the CPU, tiny, for testing
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import timm
import torch
import torch.nn as nn

import dynvit
from dynvit.export import compile_model


def build(quick: bool) -> Dict[str, nn.Module]:
    """The models, the sparse ones with their dense twin's weights."""
    if quick:  # the same families, tiny
        names = dict(vit=('test_dynamicvit', 'test_evovit'), cnn='test_fbs_resnet')
        vit_dense = dynvit.create_model(names['vit'][0], keep_ratio=1.0)
        dvit = dynvit.create_model(names['vit'][0])
        evo = dynvit.create_model(names['vit'][1])
        fbs = dynvit.create_model(names['cnn'])
    else:
        deit = timm.create_model('deit_small_patch16_224')
        dvit = dynvit.create_model('dynamicvit_small_patch16_224', keep_ratio=0.7)
        evo = dynvit.create_model('evovit_small_patch16_224', keep_ratio=0.5)
        for m in (dvit, evo):
            m.load_state_dict(deit.state_dict(), strict=False)
        vit_dense = dvit.dense_copy()
        fbs = dynvit.create_model('fbs_resnet18', density=0.5)
    models = {'vit_dense': vit_dense, 'dynamicvit_0.7': dvit, 'evovit_0.5': evo,
              'cnn_dense': fbs.dense_copy(), 'fbs_0.5': fbs}
    return {k: m.eval() for k, m in models.items()}


def inputs(model: nn.Module, batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    c, h, w = model.pretrained_cfg['input_size']
    if hasattr(model, 'patch_embed'):
        h, w = model.patch_embed.img_size
    # smooth images: the token / channel choices vary as on photos
    x = torch.nn.functional.interpolate(torch.randn(batch, c, max(2, h // 8), max(2, w // 8), generator=g),
                                        size=(h, w), mode='bilinear', align_corners=False)
    return x.to(device=device, dtype=dtype)


def checks(models: Dict[str, nn.Module], device: str, quick: bool) -> List[dict]:
    out = []
    dvit = models['dynamicvit_0.7']
    x = inputs(dvit, 4 if quick else 16, device, torch.float32)
    with torch.no_grad():
        gathered, aux = dvit.to(device)(x, return_aux=True)
        masked = dvit(x, decisions=[d.float() for d in aux.decisions])
    diff = (gathered - masked).abs().max().item()
    out.append(dict(check='DynamicViT gathered = masked (fp32)', max_abs_diff=diff, passed=diff < 1e-3))
    # bf16 rounding flips near-tied choices (fresh keep predictors and gates score many tokens and
    # channels alike), so the bf16 pass gets the fp32 pass's decisions where the family takes them
    given = {'dynamicvit_0.7': lambda aux: [d.float() for d in aux.decisions], 'fbs_0.5': lambda aux: aux.indices}
    for name in ('dynamicvit_0.7', 'evovit_0.5', 'fbs_0.5'):
        model = models[name]
        x = inputs(model, 4 if quick else 32, 'cpu', torch.float32)
        with torch.no_grad():
            ref, ref_aux = model.to('cpu')(x, return_aux=True)
            fp32, aux = model.to(device)(x.to(device), return_aux=True)
            kwargs = {}
            if name in given:
                kwargs['decisions'] = [None if d is None else d.to(device) for d in given[name](ref_aux)]
            bf16 = model.to(torch.bfloat16)(x.to(device, torch.bfloat16), **kwargs).float().cpu()
        model.float()
        same = all(torch.equal(a.cpu(), b) for a, b in zip(aux.kept_masks, ref_aux.kept_masks))
        d32 = (fp32.cpu() - ref).abs().max().item()
        d16 = (bf16 - ref).abs().max().item() / max(1e-6, (ref.max() - ref.min()).item())
        top1 = (bf16.argmax(1) == ref.argmax(1)).float().mean().item()
        out.append(dict(check=f'{name}: {device} fp32 = CPU fp32', max_abs_diff=d32, same_choices=same,
                        passed=d32 < 1e-3 and same))
        out.append(dict(check=f'{name}: {device} bf16 = CPU fp32' + (' (same decisions)' if kwargs else ''),
                        rel_diff=d16, top1_agreement=top1, passed=d16 < 0.05 and top1 >= 0.95))
    return out


def timed(fns: Dict[str, Callable[[], torch.Tensor]], device: str, rounds: int, runs: int) -> Dict[str, float]:
    """Median seconds per call; the functions take turns round by round."""
    times = {k: [] for k in fns}
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            sync()
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def executable(model: nn.Module, x: torch.Tensor, mode: str, device: str) -> Callable[[], torch.Tensor]:
    """``model(x)`` as a zero-argument call: eager, a captured CUDA graph, or compiled."""
    if mode == 'eager':
        return lambda: model(x)
    if mode == 'compiled':
        compiled = compile_model(model)
        return lambda: compiled(x)
    # CUDA graph: warm up on a side stream, capture once, replay
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--quick', action='store_true', help='tiny models, few runs (to test the script)')
    ap.add_argument('--batches', type=int, nargs='+', default=[1, 64, 256])
    ap.add_argument('--modes', nargs='+', default=['eager', 'cuda_graph', 'compiled'])
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--out', default='benchmarks/results/gpu.json')
    args = ap.parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('bench_gpu: no CUDA device here; run it on a GPU machine (benchmarks/gpu.sh), or --device cpu --quick '
              'to test the script')
        return 0
    modes = [m for m in args.modes if m != 'cuda_graph' or args.device == 'cuda']
    if args.quick:
        args.batches, args.rounds, args.runs = [1, 4], 2, 2
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    start = time.time()
    models = build(args.quick)
    result = dict(device=torch.cuda.get_device_name() if args.device == 'cuda' else platform.processor(),
                  torch=torch.__version__, timm=timm.__version__, checks=checks(models, args.device, args.quick),
                  speed=[])
    for c in result['checks']:
        print(('ok   ' if c['passed'] else 'FAIL ') + json.dumps(c))
    pairs = [('vit_dense', ['dynamicvit_0.7', 'evovit_0.5']), ('cnn_dense', ['fbs_0.5'])]
    for dtype in (torch.float32, torch.bfloat16):
        for mode in modes:
            for batch in args.batches:
                for dense, sparse in pairs:
                    names = [dense] + sparse
                    fns = {}
                    if mode == 'compiled':
                        torch._dynamo.reset()  # one cell's graphs at a time (the recompile limit counts them all)
                    with torch.inference_mode():
                        for n in names:
                            m = models[n].to(args.device, dtype)
                            try:
                                fns[n] = executable(m, inputs(m, batch, args.device, dtype), mode, args.device)
                                fns[n]()
                            except Exception as e:  # recorded, the rest goes on
                                result['speed'].append(dict(model=n, dtype=str(dtype), mode=mode, batch=batch,
                                                            error=f'{type(e).__name__}: {str(e).splitlines()[0]}'))
                                fns.pop(n, None)
                        times = timed(fns, args.device, args.rounds, args.runs)
                    for n, t in times.items():
                        row = dict(model=n, dtype=str(dtype).split('.')[-1], mode=mode, batch=batch, ms=t * 1e3,
                                   images_per_s=batch / t)
                        if dense in times:
                            row['vs_dense'] = times[dense] / t
                        result['speed'].append(row)
                        print(f'{row["dtype"]:<9}{mode:<11}b{batch:<5}{n:<16}{row["ms"]:9.2f} ms'
                              f'{row["images_per_s"]:10.0f} img/s' + (f'  {row["vs_dense"]:.2f}x' if 'vs_dense' in row
                                                                      else ''), flush=True)
    result['seconds'] = time.time() - start
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f'written: {args.out} ({result["seconds"]:.0f} s)')
    return 0 if all(c['passed'] for c in result['checks']) else 1


if __name__ == '__main__':
    sys.exit(main())
