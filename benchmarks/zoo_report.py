"""The README's zoo table and the accuracy-vs-MACs picture, both from ``bench_zoo.py``'s recorded
output (no number typed by hand):

    python benchmarks/zoo_report.py [benchmarks/results/zoo_cpu.json] [--readme README.md] [--png docs/zoo_tradeoff.png]
        [--curves benchmarks/results/zoo_curves --curves-png docs/zoo_curves.png]

The table replaces what lies between the ``<!-- zoo-table -->`` and ``<!-- /zoo-table -->`` lines of
the README (``--readme ''``: the README is left alone). The picture has one panel per dense model:
it and every sparse model measured against it (test top-1 over MMACs per image), one line per
architecture, each point labelled with its zoo tag where the label covers no other label, point or
line, and the line 0.5 points under the dense model (the zoo's accuracy target). The learning
curves (validation top-1 per epoch of each run log copied into
``benchmarks/results/zoo_curves/<run>.jsonl``) go into a second picture, one line per shipped
model, named as the zoo names it (its card names the run). Needs matplotlib (``pip install -e ".[bench]"``).
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


DPI = 110


def _save(fig, png: Path, layout: bool = True) -> None:
    if layout:
        fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI)


def _freeze_legend(ax, legend):
    """Pins a ``loc='best'`` legend where it is now (so later texts do not move it); its box."""
    renderer = ax.figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    corner = ax.transAxes.inverted().transform((box.x0, box.y1))
    legend.set_bbox_to_anchor(tuple(corner), transform=ax.transAxes)
    legend.set_loc('upper left')
    legend.borderaxespad = 0
    return box


def _line_boxes(ax, xs, ys, step: float = 4.0):
    """Small display boxes along the polyline ``xs, ys`` (every ``step`` pixels): what a label must
    not cover."""
    from matplotlib.transforms import Bbox
    points = ax.transData.transform(list(zip(xs, ys)))
    boxes = []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 / step))
        boxes += [Bbox.from_bounds(x0 + (x1 - x0) * k / n - 1, y0 + (y1 - y0) * k / n - 1, 2, 2) for k in range(n + 1)]
    return boxes


# where a label may go, in points from its point: nearest first, right before left, above before below
_OFFSETS = sorted(((dx, dy) for dx in (5, -5, 14, -14, 26, -26, 40, -40) for dy in (0, 7, -7, 14, -14, 22, -22, 32, -32)),
                  key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0] < 0, o[1] < 0))


def place_labels(ax, labels, taken=()):
    """Writes each ``(x, y, text, colour)`` of ``labels`` beside its point, at the nearest place
    (``_OFFSETS``) where it stays inside the axes and covers no other label, marker, line or box of
    ``taken`` (display boxes); a label away from its point gets a thin leader line. Returns the
    labels' display boxes."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer).padded(-2)
    taken = list(taken)
    r = 4  # a marker's half size, in pixels
    for x, y, _, _ in labels:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - r, py - r, px + r, py + r))
    placed = []
    for x, y, text, colour in labels:
        for dx, dy in _OFFSETS:
            near = dx * dx + dy * dy <= 8 * 8
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords='offset points', fontsize=7, color=colour,
                              ha='left' if dx > 0 else 'right', va='center',
                              arrowprops=None if near else dict(arrowstyle='-', color=colour, lw=0.6, shrinkA=1,
                                                                 shrinkB=3))
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer).padded(1)  # the text alone, not its leader line
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and \
                    not any(box.overlaps(t) for t in taken):
                break
            ann.remove()
        else:  # nowhere free: the nearest place
            ann = ax.annotate(text, (x, y), xytext=_OFFSETS[0], textcoords='offset points', fontsize=7, color=colour,
                              ha='left', va='center')
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)
        taken.append(box)
        placed.append(box)
    return placed


def plot(rows: Dict[str, dict], png: Path) -> list:
    """Accuracy vs MACs, one panel per dense model; each sparse model's point labelled with its tag
    where the label covers nothing else (``place_labels``). Returns the labels' display boxes."""
    from matplotlib.transforms import Bbox
    plt = _pyplot()
    panels = defaultdict(list)  # dense name -> its sparse models
    for name, r in rows.items():
        if r.get('dense'):
            panels[r['dense']].append(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False,
                             dpi=DPI)  # placed at the resolution it is saved at
    drawn = []
    for ax, (dense, names) in zip(axes[0], sorted(panels.items(), key=lambda kv: -len(kv[1]))):
        d = rows[dense]
        x0, y0 = d['mean_macs'] / 1e6, d['test_top1'] * 100
        ax.axhline(y0 - 0.5, color='0.6', ls='--', lw=1)
        by_arch = defaultdict(list)
        for n in names:
            by_arch[n.split('.')[0]].append(n)
        labels, lines = [], []
        for arch, members in sorted(by_arch.items()):
            members.sort(key=lambda n: -rows[n]['mean_macs'])
            xs = [x0] + [rows[n]['mean_macs'] / 1e6 for n in members]
            ys = [y0] + [rows[n]['test_top1'] * 100 for n in members]
            line, = ax.plot(xs, ys, marker='o', label=f'{arch}.*')
            lines.append((xs, ys))
            labels += [(x, y, n.split('.')[1], line.get_color()) for n, x, y in zip(members, xs[1:], ys[1:])]
        ax.plot([x0], [y0], marker='*', ms=14, color='k', ls='none', label='the dense twin')
        ax.plot([], [], color='0.6', ls='--', lw=1, label='dense twin − 0.5 points (the target)')
        ax.set_title(f'dense twin: {dense}', fontsize=9)
        ax.set_xlabel('MMACs per image (mean over the test set)')
        ax.set_ylabel('Fashion-MNIST test top-1 (%)')
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.1)
        drawn.append((ax, ax.legend(fontsize=7, loc='best'), labels, lines, (x0, y0)))
    fig.suptitle('dynvit zoo: accuracy vs compute (each sparse model against its dense twin; labels: the zoo tags)')
    fig.tight_layout()
    fig.canvas.draw()
    boxes = []
    for ax, legend, labels, lines, star in drawn:
        px, py = ax.transData.transform(star)
        taken = [_freeze_legend(ax, legend), Bbox.from_extents(px - 10, py - 10, px + 10, py + 10)]
        taken += [b for xs, ys in lines for b in _line_boxes(ax, xs, ys)]
        boxes += place_labels(ax, sorted(labels, key=lambda l: (-l[1], l[0])), taken)
    _save(fig, png, layout=False)
    plt.close(fig)
    return boxes


# runs that started from another recorded run's best epoch (benchmarks/zoo_fashion_mnist.sh: the second
# stages and Lite0's two runs from its dense start): their epochs are drawn after that run's
STARTS_FROM = {'vit_dyn05_13ep': 'vit_dyn05_10ep', 'vit_evo50_11ep': 'vit_evo50_8ep',
               'lite0_dense4': 'lite0_dense', 'lite0_fbs50': 'lite0_dense'}


def shipped_runs() -> Dict[str, str]:
    """``{run name: zoo model}``: the run of zoo_fashion_mnist.sh each shipped model's card names
    (its ``command``'s last word)."""
    from dynvit.hub.zoo import read_card, zoo_models
    return {read_card(name)['command'].split()[-1]: name for name in zoo_models() if read_card(name).get('command')}


def _chain(run: str) -> list:
    """``run`` and the runs it started from, the first first."""
    chain = [run]
    while chain[0] in STARTS_FROM:
        chain.insert(0, STARTS_FROM[chain[0]])
    return chain


def _mean(values) -> float:
    return sum(values) / len(values)


def _ramping(epoch: dict) -> bool:
    """Whether an epoch trained at a sparsity level well away from the one it was validated at (a
    sparsity ramp's first epochs)."""
    trained, target = epoch.get('train_sparsity'), epoch.get('sparsity')
    return bool(trained and target) and abs(_mean(trained) - _mean(target)) > 0.05


def plot_curves(logs: Path, png: Path) -> list:
    """Validation top-1 per epoch of every recorded run (``<run>.jsonl``: the trainer's log), one
    line per shipped zoo model, named as the zoo names it (``shipped_runs``): a run that started
    from another recorded run's best epoch (``STARTS_FROM``) continues that run's line and epoch
    count, dotted between the two; a ring marks the epoch whose weights were shipped. An epoch that
    trained at another sparsity level than it was validated at (a ramp's start) and fell far below
    the others sits on the bottom edge, its value and the reason written beside it. Returns the
    legend's entries and the texts beside such points."""
    from dynvit.families import spec_of_arch
    plt = _pyplot()
    logged = {log.stem: [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
              for log in sorted(logs.glob('*.jsonl'))}
    shipped = {run: model for run, model in sorted(shipped_runs().items(), key=lambda rm: rm[1]) if run in logged}
    chains = {run: [r for r in _chain(run) if r in logged] for run in shipped}
    offset = {r: sum(len(logged[p]) for p in chain[:chain.index(r)]) for chain in chains.values() for r in chain}
    users = defaultdict(list)  # run -> the shipped models whose line it is part of
    for run, chain in chains.items():
        for r in chain:
            users[r].append(shipped[run])
    # the scale: every epoch but a ramp's outliers
    steady = [e['val_top1'] * 100 for r in offset for e in logged[r] if not _ramping(e)]
    bottom = min(steady) - 0.5
    fig, ax = plt.subplots(figsize=(11, 5.2))
    colours = iter(plt.rcParams['axes.prop_cycle'].by_key()['color'])
    drawn, notes = set(), []
    for run, model in shipped.items():
        colour = next(colours)
        for r in chains[run]:
            epochs = logged[r]
            xs = [offset[r] + e['epoch'] for e in epochs]
            ys = [e['val_top1'] * 100 for e in epochs]
            shown = [max(y, bottom) for y in ys]
            if r in STARTS_FROM and STARTS_FROM[r] in logged:  # dotted from the epoch it started from
                before = logged[STARTS_FROM[r]]
                best = max(range(len(before)), key=lambda i: before[i]['val_top1'])
                ax.plot([offset[STARTS_FROM[r]] + before[best]['epoch'], xs[0]],
                        [max(before[best]['val_top1'] * 100, bottom), shown[0]], ls=':', color=colour, lw=1.2)
            if r in drawn:
                continue
            drawn.add(r)
            if r == run:  # the shipped run: solid, its shipped epoch ringed
                ax.plot(xs, shown, marker='.', color=colour, lw=1.8, label=model)
                best = max(range(len(ys)), key=lambda i: ys[i])
                ax.plot([xs[best]], [shown[best]], marker='o', ms=11, mfc='none', mec=colour, mew=1.4)
            elif len(users[r]) > 1:  # a start shared by several models' lines
                arch = users[r][0].split('.')[0]
                ax.plot(xs, shown, marker='s', ms=5, color='0.25', ls='--', lw=1,
                        label=f'{arch}: the start of its {len(users[r])} lines (not shipped)')
            else:  # an earlier run of the model's line
                ax.plot(xs, shown, marker='.', color=colour, ls='--', lw=1)
            for x, y, e in zip(xs, ys, epochs):
                if y < bottom:
                    spec = spec_of_arch(model)
                    knob = spec.knob if spec else 'sparsity level'
                    why = (f'\ntrained at {knob} {_mean(e["train_sparsity"]):.2f} on average (still ramping to '
                           f'{_mean(e["sparsity"]):.2g}), validated at {_mean(e["sparsity"]):.2g}') if _ramping(e) else ''
                    notes.append((x, bottom, f'{model}, epoch {x}: {y:.1f}% (below the scale){why}', colour))
    ax.plot([], [], marker='.', color='0.45', ls='--', lw=1, label="an earlier run of the model's line (not shipped)")
    ax.plot([], [], color='0.45', ls=':', lw=1.2, label='a run starting from the best epoch of the one before')
    ax.plot([], [], marker='o', ms=11, mfc='none', mec='0.45', mew=1.4, ls='none',
            label='the shipped weights: the best validation epoch')
    for x, y, text, colour in notes:
        ax.plot([x], [y], marker='v', color=colour, ms=8, clip_on=False)
        ax.annotate(text, (x, y), textcoords='offset points', xytext=(22, 10), fontsize=7.5, color=colour,
                    va='bottom', arrowprops=dict(arrowstyle='-', color=colour, lw=0.7, shrinkB=5))
    ax.set_ylim(bottom=bottom - 0.15)
    ax.set_xlabel('epoch (a run that starts from another continues its count)')
    ax.set_ylabel('validation top-1 (%), 6,000 held-out training images')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc='upper left', bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_title('dynvit zoo: learning curves of the shipped models (benchmarks/zoo_fashion_mnist.sh)', fontsize=11)
    missing = sorted(model for run, model in shipped_runs().items() if run not in logged)
    if missing:
        by_arch = defaultdict(list)
        for name in missing:
            arch, tag = name.split('.', 1)
            by_arch[arch].append(tag)
        ax.text(1.01, 0.0, 'no run log kept:\n' + '\n'.join(f'{a}.{{{", ".join(t)}}}' if len(t) > 1 else f'{a}.{t[0]}'
                                                          for a, t in by_arch.items()),
                transform=ax.transAxes, fontsize=7, color='0.35', va='bottom')
    _save(fig, png)
    plt.close(fig)
    return [text.get_text() for text in ax.get_legend().get_texts()] + [text for _, _, text, _ in notes]


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
