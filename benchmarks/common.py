"""Shared steps of the speed benchmarks: MACs from the per-image report, batch-1 latency and
large-batch throughput measured side by side, a printed table and a JSON record."""
import argparse
import json
import platform
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

from dynvit.runtime import count_flops, median_latencies, profile
from dynvit.runtime.report import ImageReport, SparsityReport, run_length


def parse_args(description: str, keep_ratio: Optional[float] = None, density: Optional[float] = None,
               batch: int = 32, flags: Optional[Dict[str, str]] = None,
               values: Optional[Dict[str, float]] = None) -> argparse.Namespace:
    """The options every benchmark takes (ViTs: ``--size``, ``--keep-ratio``; CNNs: ``--density``),
    the script's own on/off ``flags`` ``{'--name': help}`` and numbers ``values`` ``{'--name':
    default}``; sets the thread count and the seed."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if keep_ratio is not None:
        ap.add_argument('--size', default='small', choices=['tiny', 'small', 'base'])
        ap.add_argument('--keep-ratio', type=float, default=keep_ratio)
    if density is not None:
        ap.add_argument('--density', type=float, default=density)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--batch', type=int, default=batch, help='large batch size for throughput')
    ap.add_argument('--rounds', type=int, default=20, help='rounds of turns between the models')
    ap.add_argument('--runs-b1', type=int, default=5, help='timed batch-1 forwards per model per round')
    ap.add_argument('--runs-large', type=int, default=1, help='timed large-batch forwards per model per round')
    ap.add_argument('--out', type=str, default='')
    for flag, text in (flags or {}).items():
        ap.add_argument(flag, action='store_true', help=text)
    for flag, default in (values or {}).items():
        ap.add_argument(flag, type=float, default=default)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def compare(models: Dict[str, nn.Module], xb: torch.Tensor, rounds: int, runs_b1: int, runs_large: int,
            baseline: str = 'dense') -> Dict[str, dict]:
    """Per model: GMACs, saved fraction, mean kept patches per stage, batch-1 latency and
    large-batch throughput, each also as a ratio to ``baseline``. The models take turns."""
    reports = {k: _report(m, xb) for k, m in models.items()}
    b1 = median_latencies(models, xb[:1], rounds, runs_b1)
    bl = median_latencies(models, xb, max(1, rounds // 2), runs_large)
    dense_macs = reports[baseline].dense_macs
    rows = {}
    for k in models:
        r = reports[k]
        stages = len(r.images[0].kept)
        kept = [sum(img.kept[s] for img in r.images) / len(r.images) for s in range(stages)]
        rows[k] = dict(
            gmacs=r.mean_macs / 1e9,
            saved_fraction=1 - r.mean_macs / dense_macs,
            executed_gmacs=(r.mean_macs if r.executed_macs is None else r.executed_macs) / 1e9,
            mean_kept_tokens=[round(v, 1) for v in kept],
            tokens_per_block=r.images[0].per_block,
            # the spread over the images: patches kept after the last stage, MACs saved (min, median, max)
            kept_last_spread=_spread([img.kept[-1] for img in r.images]) if stages else [],
            saved_spread=[round(v, 4) for v in _spread([img.saved_fraction for img in r.images])],
            b1_latency_ms=b1[k] * 1e3,
            b1_speedup=b1[baseline] / b1[k],
            throughput_img_s=xb.shape[0] / bl[k],
            throughput_ratio=bl[baseline] / bl[k],
        )
    return rows


def _spread(values: list) -> list:
    """``[min, median, max]`` of ``values``."""
    ordered = sorted(values)
    return [ordered[0], ordered[len(ordered) // 2], ordered[-1]]


def _report(model: nn.Module, xb: torch.Tensor) -> SparsityReport:
    """The model's per-image report; for a model the runtime cannot profile (a static
    reference), the MACs torch's FLOP counter sees it execute on one image."""
    try:
        return profile(model, xb)[1]
    except TypeError:
        macs = count_flops(getattr(model, '_orig_mod', model), xb[:1]) // 2  # a compiled one: its eager module
        return SparsityReport([ImageReport([], macs, macs)])


def deit_title(args: argparse.Namespace, versus: str) -> str:
    """'DeiT-S vs VERSUS, 2 CPU threads, fp32, torch ..., timm ...': the ViT benchmarks' title."""
    import timm
    return (f'DeiT-{args.size[0].upper()} vs {versus}, {args.threads} CPU threads, fp32, '
            f'torch {torch.__version__}, timm {timm.__version__}')


def print_tokens_per_block(rows: Dict[str, dict]) -> None:
    """Per model, the tokens each block computed (run-length: '197x4 100x8'; the first image's
    where images keep their own numbers, then their spread)."""
    for k, r in rows.items():
        print(f'{k:<12} tokens per block: {run_length(r["tokens_per_block"])}')
        kept, saved = r.get('kept_last_spread') or [], r['saved_spread']
        if kept and kept[0] != kept[-1]:
            print(f'{"":<12} per image (min / median / max): {kept[0]} / {kept[1]} / {kept[2]} patches kept '
                  f'after the last stage, {saved[0]:.1%} / {saved[1]:.1%} / {saved[2]:.1%} of the MACs saved')


def print_rows(title: str, rows: Dict[str, dict], batch: int) -> None:
    """The table; a 'GMACs run' column when some model computed more per image at the large batch
    than its images needed (channel-gated CNNs running the union of a batch's channels)."""
    run = any(abs(r['executed_gmacs'] - r['gmacs']) > 1e-9 for r in rows.values())
    print(title)
    print(f'{"model":<12} {"GMACs":>6} {"saved":>6} ' + (f'{"GMACs run b" + str(batch):>14} ' if run else '')
          + f'{"kept/stage (mean)":>18} {"b1 ms":>8} {"b1 x":>6} {"b" + str(batch) + " img/s":>10} {"x":>6}')
    for k, r in rows.items():
        kept = run_length([round(v) for v in r['mean_kept_tokens']]) if r['mean_kept_tokens'] else '-'
        print(f'{k:<12} {r["gmacs"]:>6.2f} {r["saved_fraction"]:>6.1%} '
              + (f'{r["executed_gmacs"]:>14.2f} ' if run else '')
              + f'{kept:>18} {r["b1_latency_ms"]:>8.1f} '
              f'{r["b1_speedup"]:>6.2f} {r["throughput_img_s"]:>10.2f} {r["throughput_ratio"]:>6.2f}')


def save(path: str, title: str, args: dict, rows: Dict[str, dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dict(
        title=title, args=args, machine=platform.processor() or platform.machine(), results=rows), indent=1))
