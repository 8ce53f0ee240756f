"""The README's zoo table and the accuracy-vs-MACs picture, both from ``bench_zoo.py``'s recorded
output (nothing typed by hand):

    python benchmarks/zoo_report.py [benchmarks/results/zoo_cpu.json] [--readme README.md] [--png docs/zoo_tradeoff.png]
        [--curves benchmarks/results/zoo_curves --curves-png docs/zoo_curves.png]

The table replaces what lies between the ``<!-- zoo-table -->`` and ``<!-- /zoo-table -->`` lines of
the README. The picture has one panel per dense model: it and every sparse model measured against
it (test top-1 over MMACs per image), one line per architecture, and the line 0.5 points under the
dense model (the zoo's accuracy target). The learning curves (validation top-1 per epoch of each
run log copied into ``benchmarks/results/zoo_curves/<run>.jsonl``) go into a second picture. Needs matplotlib (``pip install -e ".[bench]"``).
"""
import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
START, END = '<!-- zoo-table -->', '<!-- /zoo-table -->'


def markdown_table(rows: Dict[str, dict]) -> str:
    """One row per model: accuracy (and its delta to the dense twin), MACs, the share of MACs saved,
    batch-1 latency and batch-32 throughput (and their speed-ups over the dense twin)."""
    lines = ['| model | test top-1 | MMACs / image | saved vs dense | batch-1 latency | batch-32 throughput |',
             '|---|---|---|---|---|---|']
    for name, r in rows.items():
        top1 = f'{r["test_top1"]:.2%}' + (f' ({(r["test_top1"] - r["dense_top1"]) * 100:+.2f})' if r.get('dense') else '')
        saved = f'{1 - r["mean_macs"] / r["dense_macs"]:.1%}' if 'dense_macs' in r else '–'
        b1 = f'{r["b1_ms"]:.2f} ms' + (f' ({r["b1_speedup"]:.2f}×)' if 'b1_speedup' in r else '')
        b32 = f'{r["b32_img_s"]:.0f} img/s' + (f' ({r["b32_speedup"]:.2f}×)' if 'b32_speedup' in r else '')
        lines.append(f'| `{name}` | {top1} | {r["mean_macs"] / 1e6:.1f} | {saved} | {b1} | {b32} |')
    return '\n'.join(lines)


def replace_table(readme: Path, table: str) -> None:
    """Puts ``table`` between the README's markers (which must be there, once)."""
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r'\n.*?' + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f'{readme}: needs exactly one {START} ... {END} block')
    readme.write_text(pattern.sub(lambda _: f'{START}\n{table}\n{END}', text))


def _pyplot():
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, png: Path) -> None:
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def plot(rows: Dict[str, dict], png: Path) -> None:
    """Accuracy vs MACs, one panel per dense model."""
    plt = _pyplot()
    panels = defaultdict(list)  # dense name -> its sparse models
    for name, r in rows.items():
        if r.get('dense'):
            panels[r['dense']].append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, (dense, names) in zip(axes[0], sorted(panels.items(), key=lambda kv: -len(kv[1]))):
        d = rows[dense]
        x0, y0 = d['mean_macs'] / 1e6, d['test_top1'] * 100
        ax.axhline(y0 - 0.5, color='0.6', ls='--', lw=1)
        ax.text(x0, y0 - 0.5, 'dense − 0.5 ', color='0.4', ha='right', va='bottom', fontsize=8)
        by_arch = defaultdict(list)
        for n in names:
            by_arch[n.split('.')[0]].append(n)
        for arch, members in sorted(by_arch.items()):
            members.sort(key=lambda n: -rows[n]['mean_macs'])
            xs = [x0] + [rows[n]['mean_macs'] / 1e6 for n in members]
            ys = [y0] + [rows[n]['test_top1'] * 100 for n in members]
            line, = ax.plot(xs, ys, marker='o', label=arch)
            for n, x, y in zip(members, xs[1:], ys[1:]):
                ax.annotate(n.split('.')[1], (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7,
                            color=line.get_color())
        ax.plot([x0], [y0], marker='*', ms=14, color='k', ls='none', label=f'dense: {dense}')
        ax.set_xlabel('MMACs per image (mean over the test set)')
        ax.set_ylabel('Fashion-MNIST test top-1 (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='best')
    fig.suptitle('dynvit zoo: accuracy vs compute (each sparse model against its dense twin)')
    _save(fig, png)


def plot_curves(logs: Path, png: Path) -> None:
    """Validation top-1 per epoch of every recorded run (``<run>.jsonl``: the trainer's log)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    curves = {}
    for log in sorted(logs.glob('*.jsonl')):
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        curves[log.stem] = ([e['epoch'] for e in epochs], [e['val_top1'] * 100 for e in epochs])
    # the scale follows where the runs end; an early point far below (a density ramp) sits on the
    # bottom edge with its value written beside it
    bottom = min(ys[-1] for _, ys in curves.values()) - 3
    for run, (xs, ys) in curves.items():
        line, = ax.plot(xs, [max(y, bottom) for y in ys], marker='.', label=run)
        for x, y in zip(xs, ys):
            if y < bottom:
                ax.annotate(f'{y:.1f}%', (x, bottom), textcoords='offset points', xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    ax.set_ylim(bottom=bottom - 0.2)
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation top-1 (%), 6,000 held-out training images')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title('dynvit zoo: learning curves (benchmarks/zoo_fashion_mnist.sh)')
    _save(fig, png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('results', nargs='?', default=str(ROOT / 'benchmarks' / 'results' / 'zoo_cpu.json'))
    ap.add_argument('--readme', default=str(ROOT / 'README.md'))
    ap.add_argument('--png', default=str(ROOT / 'docs' / 'zoo_tradeoff.png'))
    ap.add_argument('--curves', default=str(ROOT / 'benchmarks' / 'results' / 'zoo_curves'))
    ap.add_argument('--curves-png', default=str(ROOT / 'docs' / 'zoo_curves.png'))
    args = ap.parse_args()
    rows = json.loads(Path(args.results).read_text())['rows']
    table = markdown_table(rows)
    print(table)
    if args.readme:
        replace_table(Path(args.readme), table)
    if args.png:
        plot(rows, Path(args.png))
        print(f'wrote {args.png}')
    if args.curves_png and Path(args.curves).is_dir():
        plot_curves(Path(args.curves), Path(args.curves_png))
        print(f'wrote {args.curves_png}')


if __name__ == '__main__':
    main()
