"""What each dynamic family is, declared once and readable without importing torch.

Every ``<family>.json`` file of this package declares one family (a ``FamilySpec``, its fields
by name): its name and paper, the modules that hold its models, its sparsity knob with the
command-line flag that sets it and what one value means, the words reports use, the checkpoint
parts that are its own, the picture that shows what it kept. The families are found by listing
this package, so a new method adds its file here and names no other family anywhere: the model
classes take their labels from their spec, the command line builds its knob flags, help texts
and examples from all specs (without torch, so ``dynvit --help`` stays fast), the demo orders its
models by them, and the checkpoint filters drop the parts of other families' files through
``foreign_parts``.
"""
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['FamilySpec', 'KnobOption', 'all_specs', 'exported_names', 'foreign_parts', 'knob_options', 'read_spec',
           'spec_of', 'spec_of_arch']


@dataclass(frozen=True)
class FamilySpec:
    """One dynamic family.

    Attributes:
        about: One line: the method and its paper.
        paper_ids: The paper's identifier ('arXiv:...'), in the models' pretrained cfgs.
        paper_name: The paper's title, in the same.
        name: Its name in messages ('MyMethod').
        models: Its model modules (importing them registers its architectures in timm).
        layers: The modules of ``dynvit.layers`` that are its own building blocks.
        exports: Public names -> the module defining them; ``dynvit.<name>`` finds them there.
        arch_prefixes: The prefixes of its registered architectures ('mymethod_').
        knob: The ``set_sparsity`` keyword that trades accuracy for MACs ('keep_ratio').
        flag: The command-line flag that sets the knob ('--keep-ratio').
        flag_type: How the command line reads the flag: 'fraction' (a number in (0, 1]) or
            'counts' (whole numbers: ``R``, ``R1,R2,...`` or ``R:INFLECT``).
        knob_noun: What the knob is, in words ('keep ratio').
        meaning: What a value of the knob means, as a rule ('rho: stage s keeps rho^s ...'): summaries
            print it beside the value in use.
        meaning_example: The rule worked out for one value, for help texts ('0.5 -> 0.5 / 0.25').
        order: Where its models come in listings and the demo (lower first).
        kept_unit: What ``aux.kept`` counts ('patches', 'channels').
        stage_label: Column title of ``aux.kept`` in reports.
        per_block_label: Column title of ``aux.per_block`` in reports.
        total_label: What ``aux.kept_total`` counts, in reports.
        kept_style: How reports print ``aux.kept``: 'stages' (``a / b / c``) or 'runs' (run-length).
        sparse_label: What its sparse modules are ('keep predictors'); '' when it selects by a rule.
        own_parts: ``{checkpoint key prefix: what it holds}`` of the modules it adds to a dense
            backbone: another family's filter drops them, taking the backbone.
        picture: How pictures show what an image kept: 'stages' (a panel per stage, the patches
            it did not keep marked, fused ones tinted), 'groups' (merged patches in their group's
            colour) or 'channels' (a map of each gated layer's channels).
        kept_patch: What a patch a stage kept is, for the legends of 'stages' pictures.
        not_kept: What a patch a stage did not keep became, for the same ('patch dropped by the
            panel's stage'; a family that updates those patches cheaply instead says so).
        onnx_batch_fixed: Why an ONNX graph of the family needs a fixed batch size ('' if not).
        example: A model of the family for help texts (a zoo tag, offline), and
        example_value: a value of its knob to show with it.
    """
    about: str
    paper_ids: str
    paper_name: str
    name: str
    models: Tuple[str, ...]
    layers: Tuple[str, ...]
    exports: Dict[str, str]
    arch_prefixes: Tuple[str, ...]
    knob: str
    flag: str
    flag_type: str
    knob_noun: str
    meaning: str
    order: int
    kept_unit: str
    stage_label: str
    per_block_label: str
    total_label: str
    sparse_label: str = ''
    kept_style: str = 'stages'
    own_parts: Dict[str, str] = field(default_factory=dict)
    picture: str = 'stages'
    meaning_example: str = ''
    kept_patch: str = 'kept patch'
    not_kept: str = "patch dropped by the panel's stage"
    onnx_batch_fixed: str = ''
    example: str = ''
    example_value: str = ''


    def explained(self) -> str:
        """The knob's rule with its worked example, for help texts."""
        return f'{self.meaning} ({self.meaning_example})' if self.meaning_example else self.meaning


def read_spec(path: Path) -> FamilySpec:
    """The ``FamilySpec`` a family's JSON file declares (lists become tuples)."""
    data: Dict[str, Any] = json.loads(path.read_text())
    known = {f.name for f in fields(FamilySpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'{path.name}: unknown spec fields {unknown}; a FamilySpec has {sorted(known)}')
    return FamilySpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def all_specs() -> Tuple[FamilySpec, ...]:
    """Every family's spec (the ``*.json`` files of this package), in ``order``."""
    global _SPECS
    if _SPECS is None:
        found = [read_spec(p) for p in sorted(Path(__file__).parent.glob('*.json'))]
        _SPECS = tuple(sorted(found, key=lambda s: (s.order, s.name)))
    return _SPECS


_SPECS = None


def spec_of(name: str) -> FamilySpec:
    """The spec of the family called ``name``."""
    for spec in all_specs():
        if spec.name == name:
            return spec
    raise KeyError(f'no dynamic family {name!r}; known: {", ".join(s.name for s in all_specs())}')


def spec_of_arch(arch: str) -> Optional[FamilySpec]:
    """The spec of the family an architecture name (``arch`` or ``arch.tag``) belongs to, or None."""
    for spec in all_specs():
        if arch.startswith(spec.arch_prefixes):
            return spec
    return None


def exported_names() -> Dict[str, str]:
    """``{public name: its module}`` of every family."""
    return {name: module for spec in all_specs() for name, module in spec.exports.items()}


def foreign_parts(name: str) -> Dict[str, str]:
    """The checkpoint key prefixes of every family but ``name`` and what they hold: what the family
    ``name`` drops from another family's checkpoint to take its backbone."""
    return {prefix: what for spec in all_specs() if spec.name != name for prefix, what in spec.own_parts.items()}


@dataclass(frozen=True)
class KnobOption:
    """A command-line flag and the families whose knob it sets."""
    flag: str
    knob: str
    flag_type: str
    noun: str
    families: Tuple[FamilySpec, ...]

    @property
    def dest(self) -> str:
        """The argparse attribute of the flag ('--keep-ratio' -> 'keep_ratio')."""
        return self.flag.lstrip('-').replace('-', '_')

    def help(self, target: bool = False) -> str:
        """The flag's help: what it sets and, per family, what one value means."""
        what = 'the target ' if target else ''
        default = 'the starting model\'s' if target else 'the model\'s'
        meanings = '; '.join(f'{s.name}: {s.explained()}' for s in self.families)
        return f'{what}{self.noun} (default: {default}); what one value means: {meanings}'


def knob_options() -> List[KnobOption]:
    """One option per flag, in the order of the families that use it."""
    flags: Dict[str, List[FamilySpec]] = {}
    for spec in all_specs():
        flags.setdefault(spec.flag, []).append(spec)
    out = []
    for flag, specs in flags.items():
        first = specs[0]
        if any((s.knob, s.flag_type) != (first.knob, first.flag_type) for s in specs):
            raise ValueError(f'{flag} sets different knobs or types in {", ".join(s.name for s in specs)}')
        out.append(KnobOption(flag, first.knob, first.flag_type, first.knob_noun, tuple(specs)))
    return out
