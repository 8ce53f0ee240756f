"""Peak memory of ``dynvit predict`` as the folder grows: a small image, one and N large JPEGs
(a smooth gradient, SIZE x SIZE pixels, hard links of one file), each run in its own process;
the peak resident set size of that process (``getrusage`` of its parent, a fresh process each time).

    python benchmarks/predict_memory.py --model fbs_resnet18_half.fmnist_d50 --size 8000 --count 8
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image


# runs the command in a grandchild and prints that process's peak RSS (KB): one measurement per
# fresh process, since a process's RUSAGE_CHILDREN peak is the largest of all its children so far
_MEASURE = """import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(r.stderr)"""


def peak_mb(args: list) -> float:
    """Peak RSS (MB) of ``python -m dynvit ARGS`` (exit 0 or 3 expected)."""
    r = subprocess.run([sys.executable, '-c', _MEASURE, sys.executable, '-m', 'dynvit', *args],
                       capture_output=True, text=True)
    code, kb = r.stdout.split()
    if int(code) not in (0, 3):
        raise SystemExit(r.stderr)
    return int(kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='fbs_resnet18_half.fmnist_d50')
    ap.add_argument('--size', type=int, default=8000)
    ap.add_argument('--count', type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        Image.new('RGB', (40, 40), 'gray').save(root / 'small.png')
        one, many = root / 'one', root / 'many'
        one.mkdir()
        many.mkdir()
        Image.linear_gradient('L').resize((args.size, args.size)).convert('RGB').save(one / 'p0.jpg', quality=90)
        for i in range(args.count):
            (many / f'p{i}.jpg').hardlink_to(one / 'p0.jpg')
        flags = ['--json', '--threads', '1']
        rows = [(what, peak_mb(['predict', args.model, str(path), *flags])) for what, path in (
            ('a 40x40 PNG', root / 'small.png'), (f'1 JPEG of {args.size}x{args.size}', one),
            (f'{args.count} JPEGs of {args.size}x{args.size}', many))]
    print(f'dynvit predict {args.model}: peak resident memory')
    for what, mb in rows:
        print(f'  {what:<28} {mb:7.0f} MB')


if __name__ == '__main__':
    main()
