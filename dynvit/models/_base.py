"""The protocol every dynamic family implements, and the aux output every forward returns.

The trainer, the command line, the runtime report and the tests use only what is here; they
never ask which family they hold. A new method is its spec (``dynvit.families``) and one model
file: a subclass of a timm model with ``DynamicModel`` mixed in, its aux a ``DynamicAux``, its loss.

What a family provides (see ``DynamicModel``):

* its ``spec`` (a ``dynvit.families.FamilySpec``), from which the class takes its name, its
  sparsity *knob* (``sparsity_knob``: the keyword of ``set_sparsity`` that trades accuracy for
  MACs) with its meaning in words (``sparsity_meaning``), and the words reports use;
* its settings: each an attribute made by ``setting`` (reading it gives the value, assigning it
  goes through ``set_sparsity``), checked together by ``_checked_sparsity``; ``set_sparsity`` and
  ``sparsity_config()`` are the base's; the names of its constructor's sparsity arguments
  (``sparsity_args``) and the settings that switch sparsity off (``dense_settings``);
* ``training_objective(config)``: its loss;
* ``sparse_modules()``: the modules that decide what to skip (keep predictors, channel gates),
  named in words by ``sparse_label``; ``untrained_sparse`` says why they hold no trained weights
  (new, or started from a dense checkpoint), which the checkpoint filters record through
  ``_sparse_from_checkpoint``;
* ``_spent_macs(aux)`` / ``_dense_macs(aux)``: the MACs of a pass, counted analytically after it
  from what its aux recorded (tokens each block saw, channels each gate kept and the shapes each
  block computed); ``_finish_aux`` writes them into the aux, so every caller reads ``aux.macs``
  and ``aux.dense_macs``.
"""
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..families import FamilySpec, foreign_parts

__all__ = ['DynamicAux', 'DynamicModel', 'all_sparsity_args', 'setting']

UNTRAINED_NEW = 'newly initialised'
UNTRAINED_FROM_DENSE = 'started from a dense checkpoint'


@dataclass(kw_only=True)
class DynamicAux:
    """What one forward pass of a dynamic model decided and spent, per image.

    Every family's aux subclasses this; ``model(x, return_aux=True)`` returns it filled in.

    Attributes:
        macs: ``[B]`` int64 multiply-accumulates spent on each image for what it kept (the
            selection itself, predictors and gates included). FLOPs = 2 x MACs.
        dense_macs: MACs per image of the same network with sparsity off, at this input size.
        executed_macs: ``[B]`` MACs this pass computed per image: ``macs`` unless the execution
            computed more than each image needed (e.g. blocks that ran the batch's union of channels).
        features: What ``forward_features`` returned.

    Subclasses provide (as fields or properties):
        kept: ``[B, S]`` int64 units kept per stage (ViTs: patch tokens kept or fully updated
            after each selection; CNNs: channels kept by each gated layer).
        kept_of: ``S`` ints: what each stage's ``kept`` is counted out of.
        kept_masks: Per stage ``[B, kept_of[s]]`` bool: which units each image kept.
        keep_rate: ``[B]`` float: the fraction of units the image kept in the end.
        kept_total: What the image's units are counted out of in a summary (``sum(kept_of)``;
            token models: the patches).
        per_block: ``[B, K]`` int64 per computing unit (ViTs: tokens each block computed; CNNs:
            channels each gated layer chooses from).
        grid: ``(rows, cols)`` when ``kept_masks`` lie on a patch grid (row-major), else None.
        token_groups: ``[B, N]`` int64 for models that merge patches: the output token each patch
            ended in, equal values forming a group (pictures colour them); None otherwise.
        fused_masks: Per stage ``[B, kept_of[s]]`` bool for models that fuse the patches they do
            not keep into a token: the patches inside it (the others not kept are dropped); None
            for models that fuse nothing.
    """
    macs: Optional[torch.Tensor] = None
    dense_macs: int = 0
    executed_macs: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None

    grid: ClassVar[Optional[Tuple[int, int]]] = None

    @property
    def kept(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def kept_of(self) -> List[int]:
        raise NotImplementedError

    @property
    def kept_masks(self) -> List[torch.Tensor]:
        raise NotImplementedError

    @property
    def per_block(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def kept_total(self) -> int:
        return sum(self.kept_of)

    @property
    def token_groups(self) -> Optional[torch.Tensor]:
        return None

    @property
    def fused_masks(self) -> Optional[List[torch.Tensor]]:
        return None

    @property
    def keep_rate(self) -> torch.Tensor:
        """``[B]`` kept units over all stages (CNNs: of all gated channels); token models override."""
        return self.kept.sum(1).double() / max(1, self.kept_total)


def setting(name: str, doc: str) -> property:
    """A sparsity setting as an attribute of a ``DynamicModel``: reading it gives the current value,
    assigning it goes through ``set_sparsity`` (checked with the others, applied or refused whole)."""

    def read(self: 'DynamicModel') -> Any:
        return self._sparsity[name]

    def write(self: 'DynamicModel', value: Any) -> None:
        self.set_sparsity(**{name: value})

    return property(read, write, doc=doc)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class DynamicModel:
    """Mixin for a timm model with input-dependent sparsity (put it before the timm class).

    Class attributes a family sets:
        spec: Its ``dynvit.families.FamilySpec``. The class takes from it ``family`` (its name),
            ``sparsity_knob``, ``sparsity_meaning``, ``kept_unit``, ``sparse_label``,
            ``stage_label``, ``per_block_label``, ``total_label``, ``kept_style``, ``picture``,
            ``kept_patch``, ``not_kept`` and ``onnx_batch_fixed`` (see the spec for what each is).
        sparsity_args: Constructor arguments that configure the sparsity (not the backbone).
        fixed_settings: Settings chosen when the model is built and not changed after (in
            ``sparsity_config`` but not ``set_sparsity``).

    Its settings: one ``setting`` attribute each, ``_checked_sparsity`` to check new values (and
    complete them from the current ones), ``_sparsity_changed`` to update what depends on them.
    """
    spec: ClassVar[Optional[FamilySpec]] = None
    family: ClassVar[str] = ''
    sparsity_knob: ClassVar[str] = ''
    sparsity_meaning: ClassVar[str] = ''
    sparsity_args: ClassVar[Tuple[str, ...]] = ()
    fixed_settings: ClassVar[Tuple[str, ...]] = ()
    kept_unit: ClassVar[str] = ''
    sparse_label: ClassVar[str] = ''
    stage_label: ClassVar[str] = ''
    per_block_label: ClassVar[str] = ''
    total_label: ClassVar[str] = ''
    kept_style: ClassVar[str] = 'stages'
    picture: ClassVar[str] = 'stages'
    kept_patch: ClassVar[str] = ''
    not_kept: ClassVar[str] = ''
    onnx_batch_fixed: ClassVar[str] = ''
    _sparsity: Dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get('spec')
        if spec is not None:
            cls.family, cls.sparsity_knob, cls.sparsity_meaning = spec.name, spec.knob, spec.meaning
            for label in ('kept_unit', 'sparse_label', 'stage_label', 'per_block_label', 'total_label', 'kept_style',
                          'picture', 'kept_patch', 'not_kept', 'onnx_batch_fixed'):
                setattr(cls, label, getattr(spec, label))

    # ---- settings ----
    def set_sparsity(self, **settings: Any) -> 'DynamicModel':
        """Changes the settings given (None: unchanged; the others stay) and returns the model.
        Nothing changes if one is invalid or not a setting (``sparsity_settings()``)."""
        known = self.sparsity_settings()
        for name in settings:
            if name not in known:
                fixed = f' ({name} is fixed when the model is built)' if name in self.fixed_settings else ''
                raise ValueError(f'{name!r} is not a sparsity setting of {self.family} models{fixed}; they take '
                                 f'{", ".join(known)}')
        return self._update_sparsity(settings)

    def _update_sparsity(self, settings: Dict[str, Any]) -> 'DynamicModel':
        """Checks ``settings`` (None: unchanged) against the current ones, then applies all of them."""
        given = {k: v for k, v in settings.items() if v is not None}
        self._sparsity = self._checked_sparsity(dict(getattr(self, '_sparsity', {})), given)
        self._sparsity_changed()
        return self

    def _checked_sparsity(self, current: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        """All the settings after applying ``given`` to ``current`` (empty while the model is built),
        each value checked and in its canonical form; a ValueError names a bad one."""
        raise NotImplementedError

    def _sparsity_changed(self) -> None:
        """Updates what depends on the settings (they changed)."""

    def sparsity_config(self) -> Dict[str, Any]:
        """The current settings as plain values (stored with saved weights)."""
        return {k: _plain(v) for k, v in self._sparsity.items()}

    def sparsity_settings(self) -> Tuple[str, ...]:
        """The keywords ``set_sparsity`` takes."""
        return tuple(k for k in self._sparsity if k not in self.fixed_settings)

    def dense_settings(self) -> Dict[str, Any]:
        """``set_sparsity`` keywords that switch the sparsity off (the same network computing everything)."""
        return {self.sparsity_knob: 1.0}

    def is_dense(self) -> bool:
        """Whether the current settings compute everything (every level 1.0)."""
        return all(v >= 1.0 for v in self.sparsity_level)

    @property
    def sparsity_level(self) -> Tuple[float, ...]:
        """The knob's current value as a level in (0, 1], 1.0 dense, one float per stage (or a
        single one): the knob itself where it is a fraction (keep ratio, density); a family whose
        knob counts something else maps it (``_knob_of_level`` and back), so training schedules
        stay generic."""
        value = getattr(self, self.sparsity_knob)
        return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)

    def _knob_of_level(self, level: Sequence[float]) -> Any:
        """The knob's value at ``level`` (what ``set_sparsity_level`` sets)."""
        level = tuple(level)
        return level if len(level) > 1 else level[0]

    def level_text(self, level: Optional[Sequence[float]] = None) -> str:
        """The knob's value at ``level`` (default: the current one) as people write it, e.g.
        '0.7/0.49/0.343' (a family whose level is not its knob says the knob, e.g. '8')."""
        value = self._knob_of_level(self.sparsity_level if level is None else level)
        values = value if isinstance(value, (tuple, list)) else (value,)
        return '/'.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in values)

    def sparsity_text(self) -> str:
        """What the model is set to, as people write it: 'keep_ratio 0.7/0.49/0.343' (the knob and
        its value; a family with another mode in use says that instead)."""
        return f'{self.sparsity_knob} {self.level_text()}'

    def set_sparsity_level(self, level: Sequence[float]) -> 'DynamicModel':
        """Sets the knob to ``level`` (as ``sparsity_level`` gives it), e.g. from a training schedule."""
        return self.set_sparsity(**{self.sparsity_knob: self._knob_of_level(level)})

    def dense_copy(self) -> nn.Module:
        """A deep copy with the sparsity off: the same network computing everything (a distillation
        teacher, a speed baseline)."""
        import copy
        dense = copy.deepcopy(self)
        dense.set_sparsity(**self.dense_settings())
        return dense

    def foreign_parts(self) -> Dict[str, str]:
        """``{checkpoint key prefix: what it holds}`` of the modules other families add to a backbone:
        the family's checkpoint filter drops them from such a file, taking its backbone (and
        ``dynvit convert`` refuses such a file)."""
        return foreign_parts(self.family)

    def _drop_foreign_parts(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``state_dict`` without the tensors of ``foreign_parts`` (for checkpoint filters)."""
        drop = tuple(self.foreign_parts())
        return {k: v for k, v in state_dict.items() if not (drop and k.startswith(drop))}

    def static_graph_problem(self) -> Optional[str]:
        """Why the current settings have data-dependent shapes (so no whole-graph ``torch.compile``,
        CUDA graph or ONNX export), or None when the inference path is one static graph."""
        return None

    @staticmethod
    def _per_image(values: Sequence[int], batch: int, device: torch.device) -> torch.Tensor:
        """``[batch, len(values)]`` int64: per-image counts that are the same for every image."""
        return torch.tensor(values, dtype=torch.long, device=device).expand(batch, -1)

    # ---- training ----
    def training_objective(self, config: Any) -> nn.Module:
        """The family's loss (a ``dynvit.losses.DistilledLoss``) built from an ``ObjectiveConfig``."""
        raise NotImplementedError

    def sparse_modules(self) -> List[nn.Module]:
        """The modules that decide what to skip (keep predictors, channel gates): their own
        learning rate, and alone trainable during a gate warm-up. Empty for rule-based selection."""
        return []

    def init_sparse_modules(self) -> None:
        """Starts the sparse modules from the backbone's weights, without data (where the family can)."""
        raise ValueError(f'{self.family} has no data-free initialisation of its sparse modules')

    @property
    def untrained_sparse(self) -> Optional[str]:
        """Why the sparse modules hold no trained weights ('newly initialised': a model built
        without weights; 'started from a dense checkpoint'; ...), or None: trained (loaded from
        weights that hold them, or fine-tuned), or nothing to train (selection by a rule).

        The checkpoint filters set it when weights load, the trainer clears it once they learn,
        and ``save_model`` stores it, so a file saved before training says so when loaded.
        """
        if not self.sparse_modules():
            return None
        return getattr(self, '_untrained_sparse', UNTRAINED_NEW)

    @untrained_sparse.setter
    def untrained_sparse(self, why: Optional[str]) -> None:
        self._untrained_sparse = why

    def _sparse_from_checkpoint(self, found: bool, missing_why: str = UNTRAINED_FROM_DENSE) -> None:
        """Records what a state dict gave the sparse modules (the family's checkpoint filter calls
        this): ``found``: their weights, counted as trained (a dynvit file saved before training
        says otherwise in its metadata, which the loader applies after); else ``missing_why``."""
        self.untrained_sparse = None if found else missing_why

    # ---- MACs ----
    def _spent_macs(self, aux: DynamicAux) -> torch.Tensor:
        """``[B]`` MACs the pass described by ``aux`` spent per image."""
        raise NotImplementedError

    def _dense_macs(self, aux: DynamicAux) -> int:
        """MACs per image with the sparsity off, at the input size of ``aux``."""
        raise NotImplementedError

    def _executed_macs(self, aux: DynamicAux) -> torch.Tensor:
        """``[B]`` MACs the execution computed per image (more than ``macs`` where it ran unions)."""
        return aux.macs

    def _finish_aux(self, aux: DynamicAux) -> DynamicAux:
        """Writes the MACs into ``aux`` (every family's forward ends with this when it returns an aux)."""
        if aux.macs is None:
            aux.macs = self._spent_macs(aux)
        if not aux.dense_macs:
            aux.dense_macs = int(self._dense_macs(aux))
        if aux.executed_macs is None:
            aux.executed_macs = self._executed_macs(aux)
        return aux

    def count_macs(self, aux: DynamicAux) -> torch.Tensor:
        """``[B]`` MACs spent per image: ``aux.macs``."""
        if aux.macs is None:
            raise ValueError('this aux carries no MACs: take it from model(x, return_aux=True)')
        return aux.macs


def all_sparsity_args() -> frozenset:
    """The sparsity arguments of every family defined so far (not carried over when a file of one
    architecture builds another)."""
    names, todo = set(), [DynamicModel]
    while todo:
        cls = todo.pop()
        names.update(cls.sparsity_args)
        todo.extend(cls.__subclasses__())
    return frozenset(names)
