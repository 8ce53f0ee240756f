"""The shape of the package: arrows point one way, no import cycles, no module imports another
package's private modules, no file names a family but the family's own, every family is declared
once (its spec) and implements the protocol, and the command line starts without torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynvit
from dynvit.families import all_specs
from dynvit.losses import DistilledLoss
from dynvit.models import DynamicAux, DynamicModel
from helpers import images

PACKAGE = Path(dynvit.__file__).parent
# lower layers first: a package may import only from packages before it (and itself)
LAYERS = [('families', 'runtime'), ('layers', 'losses'), ('models',), ('data', 'compress'), ('hub',),
          ('train', 'predict', 'export'), ('backends', 'viz'), ('cli',)]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: Path):
    """Every dynvit module ``path`` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith('dynvit'))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            if target.startswith('dynvit'):
                out.add(target)
                for a in node.names:  # `from . import x` names a submodule
                    if (PACKAGE.parent / (target + '.' + a.name).replace('.', '/')).with_suffix('.py').exists():
                        out.add(f'{target}.{a.name}')
    return out


MODULES = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
GRAPH = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}


def _top(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_packages_import_only_from_lower_layers():
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    assert set(rank) >= {_top(m) for m in MODULES if _top(m)} - {'__main__'}
    wrong = [(m, t) for m, targets in GRAPH.items() for t in targets
             if _top(m) and _top(t) and _top(m) != '__main__' and rank[_top(t)] > rank[_top(m)]]
    assert not wrong, f'imports against the layering {LAYERS}: {wrong}'


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 'open'
        for t in sorted(GRAPH[m]):
            if state.get(t) == 'open':
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 'done'

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def _own_modules(spec):
    """A family's own modules: its model modules and its layers (its spec is a data file)."""
    return set(spec.models) | set(spec.layers)


def _names_of(spec):
    """What names a family in code or text: its name, its public names, its architectures' prefixes."""
    return {spec.name, *spec.exports, *spec.arch_prefixes}


def test_no_file_names_a_family_but_its_own():
    """Generic code never asks which family it holds, and no family names another (their specs say what
    the rest of the package needs: the loading code, the command line and the checkpoint filters read
    them): every name of a family (its name, class and function names, architecture prefixes) occurs
    only in that family's own modules (models, layers) and spec."""
    found = []
    for spec in all_specs():
        own = _own_modules(spec)
        pattern = re.compile(r'(?<![\w-])(' + '|'.join(re.escape(n) for n in sorted(_names_of(spec), key=len, reverse=True))
                             + r')')
        for module, path in MODULES.items():
            if module in own:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                for m in pattern.finditer(line):
                    found.append(f'{path.relative_to(PACKAGE.parent)}:{i} {m.group(1)}')
    assert not found, '\n'.join(found)


def test_no_module_imports_another_packages_private_modules():
    """Packages use each other's public names (``dynvit.__main__`` is the command line's own entry)."""
    wrong = [(m, t) for m, targets in GRAPH.items() for t in targets if _top(t) != _top(m) and m != 'dynvit.__main__'
             and any(part.startswith('_') and part != '__init__' for part in t.split('.')[2:])]
    assert not wrong, wrong


def test_the_command_line_starts_without_torch():
    code = ('import sys\nfrom dynvit.cli import main\nfor argv in (["--help"], ["predict", "--help"]):\n'
            '    try:\n        main(argv)\n    except SystemExit:\n        pass\n'
            'assert "torch" not in sys.modules and "timm" not in sys.modules, "torch imported"')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'DynamicViT: ' in out.stdout and 'Evo-ViT: ' in out.stdout and 'EViT: ' in out.stdout
    assert 'FBS: ' in out.stdout and 'ToMe: ' in out.stdout and '--merge-r' in out.stdout


def _families():
    todo, out = [DynamicModel], []
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__dict__.get('spec'):
            out.append(cls)
    return out


def test_every_family_is_declared_by_its_spec():
    """Each family class takes its name, knob and words from its spec, every spec has its classes,
    and every registered architecture belongs to a family by its prefix (or is a test model of one)."""
    families = _families()
    specs = {s.name: s for s in all_specs()}
    assert {c.family for c in families} == set(specs)
    for cls in families:
        spec = specs[cls.family]
        assert cls.spec is spec and (cls.sparsity_knob, cls.sparsity_meaning, cls.kept_unit) == \
            (spec.knob, spec.meaning, spec.kept_unit)
        assert cls.__module__ in spec.models
        assert all(hasattr(dynvit, name) for name in spec.exports)
    for name in dynvit.list_models():
        model_cls = type(dynvit.create_model(name)) if name.startswith('test_') else None
        owner = dynvit.families.spec_of_arch(name)
        assert owner is not None or (model_cls is not None and model_cls.spec is not None), name


@pytest.mark.parametrize('name', dynvit.list_models('test_*'))
def test_every_model_implements_the_protocol(name):
    model = dynvit.create_model(name).eval()
    assert isinstance(model, DynamicModel)
    assert model.sparsity_knob in model.sparsity_settings()
    level = model.sparsity_level
    assert all(0 < v < 1 for v in level)
    x = images(2, size=model.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
    assert isinstance(aux, DynamicAux)
    assert aux.macs.shape == (2,) and aux.macs.dtype == torch.long and (aux.macs < aux.dense_macs).all()
    assert torch.equal(aux.executed_macs, aux.macs) or (aux.executed_macs >= aux.macs).all()
    assert aux.kept.shape == (2, len(aux.kept_of)) and aux.per_block.shape[0] == 2
    for mask, total, kept in zip(aux.kept_masks, aux.kept_of, aux.kept.T):
        assert mask.shape == (2, total) and torch.equal(mask.sum(1), kept)
    assert ((0 < aux.keep_rate) & (aux.keep_rate < 1)).all()
    assert model.count_macs(aux) is aux.macs
    # forward_features gives the same aux with its MACs
    _, aux2 = model.forward_features(x, return_aux=True)
    assert torch.equal(aux2.macs, aux.macs)
    # the dense copy computes everything; the knob's level round-trips
    dense = model.dense_copy()
    with torch.no_grad():
        _, dense_aux = dense(x, return_aux=True)
    assert (dense_aux.macs >= aux.dense_macs).all() and dense_aux.dense_macs == aux.dense_macs
    assert model.set_sparsity_level(level).sparsity_level == level
    # training: the family's objective reaches the sparse modules
    loss_fn = model.training_objective(dynvit.losses.ObjectiveConfig())
    assert isinstance(loss_fn, DistilledLoss)
    model.train()
    logits, aux = model(x, return_aux=True)
    loss, parts = loss_fn(logits, aux, torch.tensor([0, 1]))
    loss.backward()
    owned = {id(p) for p in model.parameters()}
    for m in model.sparse_modules():
        assert all(id(p) in owned for p in m.parameters())
