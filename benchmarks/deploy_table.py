"""The deployment tables of docs/deployment.md from bench_deploy.py's recorded results (markdown on stdout).

    python benchmarks/deploy_table.py benchmarks/results/deploy_deit_cpu.json
"""
import json
import sys


def table(path: str) -> str:
    r = json.load(open(path))
    rows, macs = r['rows'], r['macs']
    batches = list(rows)
    timm = 'eager:timm_dense' in rows[batches[0]]['ms']
    head = ['backend', 'model', 'MMACs'] + [f'b{b} ms' for b in batches] + [f'b{b} vs dense' for b in batches]
    head += [f'b{b} vs timm eager' for b in batches] if timm else []
    out = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for key in rows[batches[0]]['ms']:
        backend, model = key.split(':')
        if model == 'timm_dense' or model.startswith('dense'):
            dense = key
        else:
            dense = f'{backend}:' + ('dense' if 'dense' in macs else f'dense.{model.split(".")[0]}')
        ms = [rows[b]['ms'] for b in batches]
        cells = [backend, model, f'{macs[model] / 1e6:.1f}'] + [f'{m[key]:.1f}' for m in ms]
        cells += [f'{m[dense] / m[key]:.2f}×' for m in ms]
        if timm:
            cells += [f'{m["eager:timm_dense"] / m[key]:.2f}×' for m in ms]
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out)


if __name__ == '__main__':
    print(table(sys.argv[1]))
