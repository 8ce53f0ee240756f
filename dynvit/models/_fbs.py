"""What every FBS model shares: the gated-block protocol, the sparsity settings, the aux output.

Paper: Dynamic Channel Pruning: Feature Boosting and Suppression (Gao et al., ICLR 2019),
arXiv:1810.05331. The gate itself and the sliced convolutions are in
``dynvit.layers.channel_gate``; each family (``fbs_resnet``, ``fbs_efficientnet``) subclasses
timm's block, mixes in ``GatedBlock`` and writes its masked and skipped computations.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..families import spec_of
from ..layers.channel_gate import (
    ChannelGate,
    check_batch_norm,
    check_sliceable_conv,
    importance_bias,
    num_kept,
    select_channels,
    tracing,
)
from ..losses import DistilledLoss, ObjectiveConfig, check_weight
from ._base import DynamicAux, DynamicModel, setting
from ._helpers import check_image_batch, check_state_dict, first_conv_keys, is_scalar

EXECUTIONS = ('auto', 'grouped', 'loop', 'union', 'mask')


@dataclass
class FBSAux(DynamicAux):
    """What the gates of one forward pass decided (and, from ``DynamicAux``, what it spent:
    ``macs`` per image for the channels the image kept, gates included, whatever the batch
    around it; ``executed_macs``, more than ``macs`` where a block ran the batch's union of
    channels (``execution='union'``, or chosen by 'auto'); a masked (training) pass counts
    like ``macs``. ``features`` is the final feature map, before pooling).

    Attributes:
        indices: Per gate ``[B, k]`` the kept channels of each image (ascending); None for a
            gate that was off (density 1.0).
        saliency: Per gate ``[B, C]`` the gate's saliency (carries gradients in training, for
            the L1 term); None for a gate that was off.
        kept_channels: ``[B, G]`` channels each gate kept (``kept``).
        gate_channels: Channels each gate chooses from (``kept_of``).
        block_hw: Per gated block (by module name) its input and output ``(h, w)``.
        computed: Per gated block the channels per gate it computed for every image when that is
            not what each kept (a union), else None.
        fixed_macs: MACs of the ungated parts (stem, dense blocks, head) per image.
    """
    indices: List[Optional[torch.Tensor]]
    saliency: List[Optional[torch.Tensor]]
    kept_channels: torch.Tensor
    gate_channels: List[int]
    block_hw: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = field(default_factory=dict)
    computed: Dict[str, Optional[List[int]]] = field(default_factory=dict)
    fixed_macs: int = 0

    @property
    def kept(self) -> torch.Tensor:
        return self.kept_channels

    @property
    def kept_of(self) -> List[int]:
        return list(self.gate_channels)

    @property
    def per_block(self) -> torch.Tensor:
        """``[B, G]`` channels each gate chooses from."""
        return torch.tensor(self.gate_channels, dtype=torch.long).expand(self.kept_channels.shape[0], -1)

    @property
    def kept_masks(self) -> List[torch.Tensor]:
        """Per gate ``[B, C]``: the channels each image kept (all of them where the gate was off)."""
        B = self.kept_channels.shape[0]
        device = self.kept_channels.device
        out = []
        for idx, c in zip(self.indices, self.gate_channels):
            if idx is None:
                out.append(torch.ones(B, c, dtype=torch.bool, device=device))
            else:
                out.append(torch.zeros(B, c, dtype=torch.bool, device=idx.device).scatter_(1, idx, True))
        return out


# ---- the objective ----

def saliency_l1(saliency: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Mean absolute saliency: per gate the batch mean of ``mean_c |s_c|``, averaged over the gates
    that were on (0 when none was).

    Args:
        saliency: Per gate ``[B, C]`` saliencies (``FBSAux.saliency``); None for gates that were off.
    """
    terms = [s.abs().mean() for s in saliency if s is not None]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


class FBSLoss(DistilledLoss):
    """The FBS training objective: ``ce(logits) + l1_weight * saliency_l1(aux.saliency)
    + distill_weight * kl(logits, teacher_logits)``.

    The paper sums the saliencies' absolute values; here they are averaged per channel and
    over the gates, so the weight does not depend on the network's width or depth.

    Args:
        base_criterion: Classification loss (default cross-entropy).
        l1_weight: Weight of the saliency L1 term.
        distill_weight: Weight of ``distillation_kl`` (used when teacher logits are given).
        temperature: Softening temperature of the distillation.
    """

    def __init__(
            self,
            base_criterion: Optional[nn.Module] = None,
            l1_weight: float = 1e-3,
            distill_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        self.l1_weight = check_weight('l1_weight', l1_weight)
        super().__init__(base_criterion, distill_weight, temperature)

    def forward(
            self,
            logits: torch.Tensor,
            aux: 'FBSAux',
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: ``[B, K]``.
            aux: The ``FBSAux`` of the forward (``return_aux=True``).
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Teacher logits ``[B, K]``.

        Returns:
            The total loss and its detached parts by name.
        """
        if not hasattr(aux, 'saliency'):
            raise ValueError('FBSLoss needs the FBSAux of the forward: call model(x, return_aux=True)')
        parts = {'ce': self.base_criterion(logits, target), 'l1': saliency_l1(aux.saliency).to(logits)}
        total = parts['ce'] + self.l1_weight * parts['l1']
        return self._with_distillation(total, parts, logits, teacher_logits)


class GateTrace:
    """Records, during one forward, what each gate did and the shapes each part computed (the
    MACs are counted from this record after the pass, ``FBSModel._spent_macs``). Slots are
    addressed by the gate's position in the model, so a block re-run by activation
    checkpointing overwrites its own."""

    def __init__(self, num_gates: int, decisions: Optional[Sequence[torch.Tensor]] = None) -> None:
        self.decisions = decisions
        self.indices: List[Optional[torch.Tensor]] = [None] * num_gates
        self.saliency: List[Optional[torch.Tensor]] = [None] * num_gates
        self.kept: List[Optional[torch.Tensor]] = [None] * num_gates
        self.block_hw: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = {}  # gated block -> (in_hw, out_hw)
        self.computed: Dict[str, Optional[List[int]]] = {}  # gated block -> channels computed per gate (union)
        self.fixed_macs: Dict[str, int] = {}  # ungated part (stem, dense blocks, head) -> MACs

    def given(self, gate: int) -> Optional[torch.Tensor]:
        return None if self.decisions is None else self.decisions[gate]


TensorGetter = Callable[[str], Optional[torch.Tensor]]  # a block's tensor by its own name ('bn1.weight'), or None


class BNParams(NamedTuple):
    """An inference BatchNorm's parameters as float32: affine ``gamma``/``beta`` and ``scale``
    (``gamma / sqrt(running_var + eps)``, what it multiplies its input by)."""
    gamma: torch.Tensor
    beta: torch.Tensor
    scale: torch.Tensor


def bn_params(tensor: TensorGetter, name: str, bn: nn.Module) -> BNParams:
    """``BNParams`` of the BatchNorm ``bn`` named ``name`` in a block, its tensors read by ``tensor``
    (they may come from a checkpoint rather than from ``bn`` itself)."""
    var = tensor(f'{name}.running_var').float()
    gamma, beta = tensor(f'{name}.weight'), tensor(f'{name}.bias')
    gamma = torch.ones_like(var) if gamma is None else gamma.float()
    beta = torch.zeros_like(var) if beta is None else beta.float()
    return BNParams(gamma, beta, gamma * torch.rsqrt(var + bn.eps))


def relu_cap(act: nn.Module) -> Optional[float]:
    """6 for ReLU6, else None: other activations are taken as ReLU by the gate importance."""
    return 6.0 if isinstance(act, nn.ReLU6) else None


def out_pixels(x: torch.Tensor, conv: nn.Conv2d) -> int:
    """Output pixels of ``conv`` on ``x`` ``[B, C, H, W]`` (padded to keep the size at stride 1)."""
    return -(-x.shape[-2] // conv.stride[0]) * -(-x.shape[-1] // conv.stride[1])


def input_column_norms(weight: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    """``[C_in]`` norm of each input channel's weights ``[C_out, C_in, kh, kw]`` with the output
    channels scaled by the BatchNorm after the convolution: how strongly the next layer reads it."""
    return (weight.float() * out_scale[:, None, None, None]).transpose(0, 1).flatten(1).norm(dim=1)


class GatedBlock:
    """Mixin for a timm residual block with FBS gates (put it before the timm class).

    Subclasses define ``_gate_names`` (attribute names of their ``ChannelGate`` s in order) and
    the computations, each returning ``(output, indices, saliencies, computed)``:
    ``_masked(x, given)`` (dense convolutions times the gates, for training; ``given``
    decisions per gate or None), ``_skipped(x)`` (batch-grouped: each image its own kept
    channels) and ``_skipped_union(x)`` (the batch computes the union of its images' channels);
    ``computed`` is the channel count per gate each image computed when that is not what it
    kept (union), else None. ``_count_macs(in_hw, out_hw, kept)`` gives the block's MACs for
    ``[B, gates]`` channel counts (None: dense, gates off), gates included. ``_gate_importance(tensor)`` gives
    per gate a static ``[C]`` importance of its channels from the block's weights, read by
    ``tensor`` (see ``FBSModel.init_gates``). The model sets ``density``, ``execution``,
    ``gate_offset`` and ``block_name``. ``_map_conv`` names the gated convolution whose output map
    sets the CPU batch strategy (``_cpu_batch_strategy``).
    """
    _gate_names: Tuple[str, ...] = ()
    _map_conv: str = ''
    UNION_MAX_PIXELS = 64  # 'union' on CPU batches where each gathered weight would serve no more output pixels
    reads_layer_weights = True  # sliced, BatchNorm-folded weights (dynvit.layers.weight_reads)
    density: float = 1.0
    execution: str = 'auto'
    gate_offset: int = 0
    block_name: str = ''

    def gates(self) -> List[ChannelGate]:
        return [getattr(self, n) for n in self._gate_names]

    def forward(self, x: torch.Tensor, trace: Optional[GateTrace] = None) -> torch.Tensor:
        gates = self.gates()
        B = x.shape[0]
        computed = None  # channels computed per image and gate, when not the kept ones
        if self.density >= 1.0 and (trace is None or trace.decisions is None):
            out = super().forward(x)  # the timm block, untouched
            indices = saliency = [None] * len(gates)
        elif self.training or self.execution == 'mask' or (trace is not None and trace.decisions is not None):
            given = [None if trace is None else trace.given(self.gate_offset + j) for j in range(len(gates))]
            out, indices, saliency, computed = self._masked(x, given)
        else:
            strategy = self.execution if B > 1 and self.execution != 'auto' else self._auto(x)
            out, indices, saliency, computed = self._strategies()[strategy](x)
        if trace is not None:
            kept = torch.tensor([[g.out_channels if i is None else i.shape[1] for g, i in zip(gates, indices)]])
            kept = kept.expand(B, -1)
            for j in range(len(gates)):
                # the report lists each image's kept channels ascending (the computation takes them by saliency)
                trace.indices[self.gate_offset + j] = None if indices[j] is None else indices[j].sort(dim=1).values
                trace.saliency[self.gate_offset + j] = saliency[j]
                trace.kept[self.gate_offset + j] = kept[:, j]
            trace.block_hw[self.block_name] = (tuple(x.shape[-2:]), tuple(out.shape[-2:]))
            trace.computed[self.block_name] = computed
        return out

    def _strategies(self):
        return {'grouped': self._skipped, 'loop': self._skipped_loop, 'union': self._skipped_union}

    def _skipped_loop(self, x: torch.Tensor):
        """``_skipped`` image by image (each with its own sliced weights), concatenated."""
        parts = [self._skipped(x[i:i + 1]) for i in range(x.shape[0])]
        n = len(self._gate_names)
        return (torch.cat([p[0] for p in parts]), [torch.cat([p[1][j] for p in parts]) for j in range(n)],
                [torch.cat([p[2][j] for p in parts]) for j in range(n)], None)

    def _auto(self, x: torch.Tensor) -> str:
        """What ``execution='auto'`` runs for this batch, from its shape and device alone.

        No timing and nothing read from the data, so every run computes the same numbers (the
        strategies round differently) and nothing waits for the device. Batch 1, a compiled or
        exported graph, or any device but the CPU: 'grouped' (static shapes, no host sync). On the
        CPU at batch > 1: the block's own rule, ``_cpu_batch_strategy`` (measured per block in
        ``benchmarks/bench_fbs.py``).
        """
        if x.shape[0] == 1 or tracing() or x.device.type != 'cpu':
            return 'grouped'
        return self._cpu_batch_strategy(x)

    def _cpu_batch_strategy(self, x: torch.Tensor) -> str:
        """The strategy for a CPU batch of more than one image: 'union' where each gathered per-image
        weight would serve ``UNION_MAX_PIXELS`` output pixels or fewer (ResNet-18's layer 4 at
        224 px, the zoo's 64-px Lite0: gathering every image's weights costs more than computing
        the batch's union once; benchmarks/bench_fbs.py, per block), else 'grouped'."""
        pixels = out_pixels(x, getattr(self, self._map_conv))
        return 'union' if pixels <= self.UNION_MAX_PIXELS else 'grouped'

    def _gate_importance(self, tensor: TensorGetter) -> List[torch.Tensor]:
        raise NotImplementedError

    def num_keep(self) -> List[int]:
        """Channels each gate of the block keeps at the current density."""
        return [num_kept(self.density, g.out_channels) for g in self.gates()]

    def _decide(self, gate: ChannelGate, pooled: torch.Tensor, k: int,
                given: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Saliency ``[B, C]`` and kept channels ``[B, k]`` (``given`` ones if not None)."""
        s = gate(pooled)
        if given is None:
            return s, select_channels(s.detach(), k)[1]
        given = torch.as_tensor(given, device=s.device, dtype=torch.long)
        if given.ndim != 2 or given.shape[0] != s.shape[0] or given.numel() and (
                given.min() < 0 or given.max() >= s.shape[1]):
            raise ValueError(f'{self.block_name}: decisions must be [B, k] channel indices in [0, {s.shape[1]}) '
                             f'for B={s.shape[0]} images, got shape {tuple(given.shape)}')
        return s, given


def check_gated_convs(block: nn.Module, convs: Sequence[str], norms: Sequence[str], where: str) -> None:
    """Refuses blocks whose gated convolutions cannot be sliced or whose norms cannot be folded."""
    for n in convs:
        check_sliceable_conv(getattr(block, n), f'{where}.{n}')
    for n in norms:
        check_batch_norm(getattr(block, n), f'{where}.{n}')


def check_density(density: Any) -> float:
    """The density as a float in (0, 1], or a ValueError naming the problem."""
    if isinstance(density, bool) or not is_scalar(density):
        raise ValueError(f'density must be a number in (0, 1], got {density!r}')
    d = float(density)
    if not 0.0 < d <= 1.0:
        raise ValueError(f'density must be in (0, 1] (the fraction of channels each gate keeps), got {d}')
    return d


UNTRAINED_MAGNITUDE = "started from the backbone's weights (magnitude pruning, init_gates)"


class FBSModel(DynamicModel):
    """Mixin for a timm CNN whose residual blocks are ``GatedBlock`` s (put it before the timm class).

    Subclasses call ``_init_fbs(density, execution)`` at the end of ``__init__`` and write
    ``forward_features(x, decisions, return_aux)`` between ``_start_trace`` and ``_end_trace``.
    The pass records the shapes each block computed; the MACs are counted from them after it.
    """
    spec = spec_of('FBS')
    sparsity_args = ('density', 'execution')

    density = setting('density', 'Fraction of each gated layer\'s channels kept (1.0: gates off, the dense timm model).')
    execution = setting('execution', """How inference runs each gated block on a batch:
        'grouped': one grouped convolution per layer, each image a group with its own gathered
        weights (only its kept channels);
        'loop': image by image, each with its sliced weights;
        'union': the batch as a group of images: one convolution on the channels any of its images
        kept, the others' outputs zeroed (computes more than each image needs, reads each weight once);
        'mask': dense convolutions times the gate (the training computation);
        'auto' (default): 'grouped', except on the CPU at batch > 1, where each block runs what
        measured fastest for its shapes (blocks with outputs of 64 pixels or fewer 'union', MBConv
        blocks with outputs of 56 x 56 or more 'loop'): decided from the shapes, so every run
        gives the same numbers. At batch 1 grouped, loop and union are the same computation.
        Training always masks.""")

    def _init_fbs(self, density: float, execution: str) -> None:
        self.gated_blocks: List[GatedBlock] = []
        offset = 0
        for name, m in self.named_modules():
            if isinstance(m, GatedBlock):
                m.gate_offset, m.block_name = offset, name
                offset += len(m.gates())
                self.gated_blocks.append(m)
        self.num_gates = offset
        self._update_sparsity(dict(density=density, execution=execution))

    # ---- sparsity settings (changeable on a built model) ----
    def _checked_sparsity(self, current: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        density = check_density(given['density']) if 'density' in given else current['density']
        execution = given.get('execution', current.get('execution'))
        if execution not in EXECUTIONS:
            raise ValueError(f'execution must be one of {EXECUTIONS}, got {execution!r}')
        return dict(density=density, execution=execution)

    def _sparsity_changed(self) -> None:
        for blk in self.gated_blocks:
            blk.density, blk.execution = self.density, self.execution

    def init_gates(self, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Starts every gate as static magnitude pruning: zero weights, biases ranked by channel
        importance (``importance_bias``).

        A channel's importance is, from the weights alone, its mean activation (BatchNorm's
        shift and scale taken as a Gaussian through the activation) times the norm of the next
        layer's weights that read it. A dense network given gates this way loses at density d
        only what pruning its least important channels loses; fresh random gates would drop
        random channels, which large BatchNorm scales (EfficientNet-Lite) do not survive.

        Args:
            state_dict: Take the weights from this state dict (the model's keys) instead of the
                model, and write nothing.

        Returns:
            The gate tensors (``'<block>.<gate>.fc.weight'`` / ``.bias``) as the model's dtypes.
        """
        own = self.state_dict()
        source = own if state_dict is None else state_dict
        out = {}
        for blk in self.gated_blocks:
            prefix = f'{blk.block_name}.'
            importance = blk._gate_importance(lambda n: source.get(prefix + n))
            for name, imp in zip(blk._gate_names, importance):
                w, b = f'{prefix}{name}.fc.weight', f'{prefix}{name}.fc.bias'
                out[w] = torch.zeros_like(own[w])
                out[b] = importance_bias(imp).to(own[b])
        if state_dict is None:
            self.load_state_dict(out, strict=False)
            self.untrained_sparse = UNTRAINED_MAGNITUDE
        return out

    def static_graph_problem(self) -> Optional[str]:
        if self.execution == 'union':
            return ("execution 'union' computes the batch's union of kept channels (a data-dependent size); use "
                    "'grouped' ('auto' runs as 'grouped' when compiled or exported)")
        return None

    def init_sparse_modules(self) -> None:
        """``init_gates``: the gates start as magnitude pruning of the loaded weights."""
        self.init_gates()

    def training_objective(self, config: ObjectiveConfig) -> FBSLoss:
        """Cross-entropy, the L1 penalty on the saliencies, logit distillation."""
        return FBSLoss(base_criterion=config.criterion(), l1_weight=config.l1_weight, **config.distillation())

    def sparse_modules(self) -> List[nn.Module]:
        return [g for blk in self.gated_blocks for g in blk.gates()]

    def gate_channels(self) -> List[int]:
        """Channels each gate chooses from, in gate order."""
        return [g.out_channels for blk in self.gated_blocks for g in blk.gates()]

    def num_keep(self) -> List[int]:
        """Channels each gate keeps at the current density, in gate order."""
        return [k for blk in self.gated_blocks for k in blk.num_keep()]

    def _aux_from_trace(self, trace: GateTrace, features: torch.Tensor) -> FBSAux:
        return FBSAux(
            indices=list(trace.indices),
            saliency=list(trace.saliency),
            kept_channels=torch.stack(trace.kept, dim=1),
            gate_channels=self.gate_channels(),
            block_hw=dict(trace.block_hw),
            computed=dict(trace.computed),
            fixed_macs=sum(trace.fixed_macs.values()),
            features=features,
        )

    # ---- MACs, from the shapes each part computed ----
    def _block_macs(self, aux: FBSAux, per_gate: str) -> torch.Tensor:
        """``[B]`` MACs of the gated blocks: ``per_gate`` 'kept' (each image's own channels) or
        'computed' (what the execution ran: unions where it ran them)."""
        B = aux.kept_channels.shape[0]
        total = torch.zeros(B, dtype=torch.long, device=aux.kept_channels.device)
        for blk in self.gated_blocks:
            in_hw, out_hw = aux.block_hw[blk.block_name]
            gates = range(blk.gate_offset, blk.gate_offset + len(blk.gates()))
            kept = None
            if any(aux.indices[g] is not None for g in gates):
                computed = aux.computed.get(blk.block_name) if per_gate == 'computed' else None
                kept = aux.kept_channels[:, gates.start:gates.stop] if computed is None else \
                    torch.tensor([computed]).expand(B, -1)
            total = total + blk._count_macs(in_hw, out_hw, kept)
        return total

    def _spent_macs(self, aux: FBSAux) -> torch.Tensor:
        return self._block_macs(aux, 'kept') + aux.fixed_macs

    def _executed_macs(self, aux: FBSAux) -> torch.Tensor:
        return self._block_macs(aux, 'computed') + aux.fixed_macs

    def _dense_macs(self, aux: FBSAux) -> int:
        return aux.fixed_macs + sum(int(blk._count_macs(*aux.block_hw[blk.block_name], None))
                                    for blk in self.gated_blocks)

    def _start_trace(self, x: torch.Tensor, in_chans: int, decisions: Optional[Sequence[torch.Tensor]],
                     return_aux: bool) -> Optional[GateTrace]:
        """Checks the images and the decisions; a ``GateTrace`` when the pass records them."""
        check_image_batch(x, in_chans, None)
        if decisions is not None and len(decisions) != self.num_gates:
            raise ValueError(f'decisions must hold one [B, k] index tensor per gate ({self.num_gates}), '
                             f'got {len(decisions)}')
        return GateTrace(self.num_gates, decisions) if return_aux or decisions is not None else None

    def _end_trace(self, x: torch.Tensor, trace: Optional[GateTrace], head_macs: int,
                   return_aux: bool) -> Union[torch.Tensor, Tuple[torch.Tensor, FBSAux]]:
        """The features, with the ``FBSAux`` (head MACs added) when asked for."""
        if trace is None:
            return x
        trace.fixed_macs['head'] = head_macs
        aux = self._finish_aux(self._aux_from_trace(trace, x))
        return (x, aux) if return_aux else x

    def forward(
            self,
            x: torch.Tensor,
            decisions: Optional[Sequence[torch.Tensor]] = None,
            return_aux: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, FBSAux]]:
        """Logits ``[B, num_classes]``; with ``return_aux`` also the ``FBSAux``.

        Args:
            x: Images ``[B, C, H, W]``.
            decisions: Kept channels per gate (``aux.indices`` of another pass): runs the masked
                computation with these decisions instead of the gates' own.
            return_aux: Also return what the gates decided and the MACs spent.
        """
        if not return_aux and decisions is None:
            return self.forward_head(self.forward_features(x))
        feats, aux = self.forward_features(x, decisions=decisions, return_aux=True)
        logits = self.forward_head(feats)
        return (logits, aux) if return_aux else logits


def fbs_checkpoint_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module,
                          classifier: str) -> Dict[str, torch.Tensor]:
    """A dense timm checkpoint of the backbone gets gates initialised from its weights
    (``FBSModel.init_gates``); anything else must match.

    Args:
        state_dict: Checkpoint tensors (``{'model': ...}`` already unwrapped).
        model: The FBS model.
        classifier: Key prefix of the classifier, which timm drops when ``num_classes`` differs.
    """
    own = model.state_dict()
    gates = tuple(f'{n}.' for n, m in model.named_modules() if isinstance(m, ChannelGate))
    gate_keys = [k for k in own if k.startswith(gates)]
    dense = not any(k in state_dict for k in gate_keys)
    check_state_dict({**state_dict, **{k: own[k] for k in gate_keys}} if dense else state_dict, model,
                     ignore=(classifier,), any_shape=first_conv_keys(model))
    model._sparse_from_checkpoint(found=not dense)
    # a dense backbone: gates from its channel importance
    return {**state_dict, **model.init_gates(state_dict)} if dense else state_dict
