"""The outputs the README and the docs show, made by running what they show: one source.

    python benchmarks/doc_outputs.py           # rewrite every shown output from a fresh run
    python benchmarks/doc_outputs.py --check   # exit 1 and name each output that differs (a test runs this)

What it runs:

* every ``$ dynvit list|info|predict|export ...`` line of a fenced block in README.md and
  docs/*.md whose weights are local (no ``in1k`` download): the lines after it, up to the next
  ``$`` line or the block's end, are its output (stdout, then stderr);
* ``dynvit demo``: its whole output in docs/command_line.md (the block after "## The demo"), and
  in the README the excerpt (the first and the last model's tables) in the block after "## Demo";
* the README's Python example (the first ``python`` block after "## Python example"), its output
  in the block after it.

The files the shown commands write (``--viz docs/predict.png``, ``kr05.onnx``) go to a temporary
folder (the pictures in docs/ are made by the commands their captions give). Timings (``dynvit
bench``) are not shown outputs of this kind: they are recorded by the benchmarks.
"""
import argparse
import contextlib
import io
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
VERBS = ('list', 'info', 'predict', 'export')
SHOWN_HOME = '/home/me'  # the folder the docs show the demo run in (its picture's path is absolute)
SHOWN_ROOT = '/home/me/dynvit'  # the clone, where an output names a file in it by its absolute path
_FENCE = re.compile(r'^```[a-z]*\n(.*?)^```$', re.S | re.M)


def _run_cli(argv: List[str]) -> str:
    """``dynvit ARGV`` in this process (2 threads, as the docs say): stdout then stderr."""
    import torch
    from dynvit.cli import main
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit:
                pass
    finally:
        torch.set_num_threads(threads)
    return (out.getvalue() + err.getvalue()).replace(str(ROOT), SHOWN_ROOT)


def _shown_command(line: str) -> Optional[List[str]]:
    """The argv of a ``$ dynvit VERB ...`` line this script re-runs (None: it leaves it)."""
    if not line.startswith('$ dynvit '):
        return None
    argv = shlex.split(line[len('$ dynvit '):])
    if not argv or argv[0] not in VERBS or 'in1k' in line:
        return None
    return argv


def _written(argv: List[str]) -> List[int]:
    """The positions in ``argv`` of the files the command writes (``--viz``'s picture, an ONNX file)."""
    return [i for i, a in enumerate(argv) if a.endswith('.onnx') or i and argv[i - 1] == '--viz']


def _rerun_block(block: str, scratch: Path) -> str:
    """A block of ``$`` lines and their outputs, with the outputs of the re-runnable ones made anew.
    The files the commands write (and read back: an exported ONNX model) go to ``scratch``,
    shown under the names the block gives them."""
    parts = re.split(r'^(?=\$ )', block, flags=re.M)
    out = []
    for part in parts:
        line = part.partition('\n')[0]
        argv = _shown_command(line)
        if argv is None:
            out.append(part)
            continue
        names = {}
        for i in _written(argv):
            names[str(scratch / Path(argv[i]).name)] = argv[i]
            argv[i] = str(scratch / Path(argv[i]).name)
        text = _run_cli(argv)
        for moved, shown_name in names.items():
            text = text.replace(moved, shown_name)
        out.append(f'{line}\n{text}')
    return ''.join(out)


def _demo_output(scratch: Path) -> str:
    out = _run_cli(['demo', '--out', str(scratch / 'dynvit_demo.png')])
    return out.replace(str(scratch / 'dynvit_demo.png'), f'{SHOWN_HOME}/dynvit_demo.png')


def _demo_excerpt(full: str) -> str:
    """The README's excerpt of the demo: the header, the first and the last model's tables, the end."""
    head, *tables = full.split('\n\n')
    tail = tables.pop()
    return '\n\n'.join([head, tables[0], '...', tables[-1], '...', tail])


def _python_example(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, 'README.md', 'exec'), {'__name__': '__readme__'})
    return out.getvalue()


def _replace_after(text: str, heading: str, make: Callable[[str], str], skip: int = 0) -> str:
    """``text`` with the fenced block number ``skip`` after ``heading`` replaced by ``make(its content)``."""
    start = text.index(heading)
    blocks = list(_FENCE.finditer(text, start))
    block = blocks[skip]
    return text[:block.start(1)] + make(block.group(1)) + text[block.end(1):]


def updated(path: Path, scratch: Path, demo: Callable[[], str]) -> str:
    """What ``path`` should say."""
    text = path.read_text()
    text = _FENCE.sub(lambda m: m.group(0).replace(m.group(1), _rerun_block(m.group(1), scratch))
                      if re.search(r'^\$ dynvit ', m.group(1), re.M) else m.group(0), text)
    if path.name == 'command_line.md' and '## The demo' in text:
        text = _replace_after(text, '## The demo', lambda _: demo())
    if path.name == 'README.md':
        text = _replace_after(text, '## Demo', lambda _: _demo_excerpt(demo()))
        code = _FENCE.search(text, text.index('## Python example')).group(1)
        text = _replace_after(text, '## Python example', lambda _: _python_example(code), skip=1)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--check', action='store_true', help='change nothing; exit 1 naming the outputs that differ')
    args = ap.parse_args()
    import os
    os.chdir(ROOT)  # the shown commands' paths are relative to the clone
    sys.path.insert(0, str(ROOT))
    stale: List[Tuple[Path, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        cache: List[str] = []

        def demo() -> str:  # run once, shown twice
            if not cache:
                cache.append(_demo_output(scratch))
            return cache[0]

        for path in [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]:
            new = updated(path, scratch, demo)
            if new != path.read_text():
                if args.check:
                    old_lines, new_lines = path.read_text().splitlines(), new.splitlines()
                    first = next((i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b),
                                 min(len(old_lines), len(new_lines)))
                    shown = new_lines[first] if first < len(new_lines) else '(end)'
                    stale.append((path, f'line {first + 1}: shows {old_lines[first]!r}, the run gives {shown!r}'
                                  if first < len(old_lines) else 'the run gives more lines'))
                else:
                    path.write_text(new)
                    print(f'wrote {path.relative_to(ROOT)}')
    for path, why in stale:
        print(f'{path.relative_to(ROOT)}: {why} (python benchmarks/doc_outputs.py rewrites it)')
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
