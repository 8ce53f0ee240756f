"""The protocol every dynamic family implements, and the aux output every forward returns.

The trainer, the command line, the runtime report and the tests use only what is here; they
never ask which family they hold. A new method is one model file (a subclass of a timm model
with ``DynamicModel`` mixed in, its aux a ``DynamicAux``) plus its loss in ``dynvit.losses``.

What a family provides (see ``DynamicModel``):

* a sparsity *knob* (``sparsity_knob``: the keyword of ``set_sparsity`` that trades accuracy for
  MACs, e.g. ``keep_ratio`` or ``density``) with its meaning in words (``sparsity_meaning``);
* ``set_sparsity(**settings)`` / ``sparsity_config()`` for all its settings, the names of its
  constructor's sparsity arguments (``sparsity_args``) and the settings that switch sparsity off
  (``dense_settings``);
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

from ..families import KNOBS

__all__ = ['DynamicAux', 'DynamicModel', 'all_sparsity_args']

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
            computed more than each image needed (FBS blocks that ran the batch's union of channels).
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
        token_groups: ``[B, N]`` int64 for models that merge patches (ToMe): the output token each
            patch ended in, equal values forming a group (pictures colour them); None otherwise.
        fused_masks: Per stage ``[B, kept_of[s]]`` bool for models that fuse the patches they do
            not keep into a token (EViT): the patches inside it (the others not kept are dropped);
            None for models that fuse nothing.
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


class DynamicModel:
    """Mixin for a timm model with input-dependent sparsity (put it before the timm class).

    Class attributes a family sets:
        family: Its name in messages ('DynamicViT'), a key of ``dynvit.families.KNOBS``, which
            gives the class ``sparsity_knob`` (the ``set_sparsity`` keyword that trades accuracy
            for MACs) and ``sparsity_meaning`` (what one value of it means, for help texts).
        sparsity_args: Constructor arguments that configure the sparsity (not the backbone).
        kept_unit: What ``aux.kept`` counts ('patches', 'channels').
        sparse_label: What ``sparse_modules()`` are, in words ('keep predictors'); '' when the
            selection is a rule without learned parameters.
        stage_label: Column title of ``aux.kept`` in reports.
        per_block_label: Column title of ``aux.per_block`` in reports.
        total_label: What ``aux.kept_total`` counts, in reports.
        kept_style: How reports print ``aux.kept``: 'stages' (``a / b / c``) or 'runs' (run-length).
        checkpoint_drops: ``{key prefix: what it holds}`` of the tensors the family's checkpoint
            filter drops from another family's checkpoint (taking its backbone); converting such
            a file is refused.
        onnx_batch_fixed: Why an ONNX graph of the family needs a fixed batch size ('' if it
            does not).
    """
    family: ClassVar[str] = ''
    sparsity_knob: ClassVar[str] = ''
    sparsity_meaning: ClassVar[str] = ''
    sparsity_args: ClassVar[Tuple[str, ...]] = ()
    kept_unit: ClassVar[str] = ''
    sparse_label: ClassVar[str] = ''
    stage_label: ClassVar[str] = ''
    per_block_label: ClassVar[str] = ''
    total_label: ClassVar[str] = ''
    kept_style: ClassVar[str] = 'stages'
    checkpoint_drops: ClassVar[Dict[str, str]] = {}
    onnx_batch_fixed: ClassVar[str] = ''

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get('family') in KNOBS:
            cls.sparsity_knob, cls.sparsity_meaning = KNOBS[cls.family]

    # ---- settings ----
    def set_sparsity(self, **settings: Any) -> 'DynamicModel':
        """Changes the settings given (others stay); returns the model."""
        raise NotImplementedError

    def sparsity_config(self) -> Dict[str, Any]:
        """The current settings as plain values (stored with saved weights)."""
        raise NotImplementedError

    def sparsity_settings(self) -> Tuple[str, ...]:
        """The keywords ``set_sparsity`` takes."""
        return tuple(self.sparsity_config())

    def dense_settings(self) -> Dict[str, Any]:
        """``set_sparsity`` keywords that switch the sparsity off (the same network computing everything)."""
        return {self.sparsity_knob: 1.0}

    @property
    def sparsity_level(self) -> Tuple[float, ...]:
        """The knob's current value as a level in (0, 1], 1.0 dense, one float per stage (or a
        single one): the knob itself where it is a fraction (keep ratio, density); a family whose
        knob counts something else maps it (ToMe: ``1 - r / N``), so training schedules stay generic."""
        value = getattr(self, self.sparsity_knob)
        return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)

    def level_text(self, level: Optional[Sequence[float]] = None) -> str:
        """The knob's value at ``level`` (default: the current one) as people write it, e.g.
        '0.7/0.49/0.343' (a family whose level is not its knob says the knob: ToMe's '8')."""
        level = self.sparsity_level if level is None else level
        return '/'.join(f'{v:.4g}' for v in level)

    def set_sparsity_level(self, level: Sequence[float]) -> 'DynamicModel':
        """Sets the knob to ``level`` (as ``sparsity_level`` gives it), e.g. from a training schedule."""
        level = tuple(level)
        return self.set_sparsity(**{self.sparsity_knob: level if len(level) > 1 else level[0]})

    def dense_copy(self) -> nn.Module:
        """A deep copy with the sparsity off: the same network computing everything (a distillation
        teacher, a speed baseline)."""
        import copy
        dense = copy.deepcopy(self)
        dense.set_sparsity(**self.dense_settings())
        return dense

    def static_graph_problem(self) -> Optional[str]:
        """Why the current settings have data-dependent shapes (so no whole-graph ``torch.compile``,
        CUDA graph or ONNX export), or None when the inference path is one static graph."""
        return None

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
