"""Magnitude pruning for the dense and the dynamic models.

Paper: Learning both Weights and Connections for Efficient Neural Networks (Han, Pool, Tran,
Dally; NeurIPS 2015), arXiv:1506.02626: remove the weights of smallest magnitude, fine-tune
the rest, repeat. The gradual schedule is Zhu & Gupta's (To prune, or not to prune; 2017),
arXiv:1710.01878.

Two kinds of pruning:

* **Unstructured** (``magnitude_prune``, ``IterativePruner``): individual weights of
  ``nn.Linear`` and ``nn.Conv2d`` layers are zeroed through ``torch.nn.utils.prune``. The
  layer keeps ``weight_orig`` (trained) and a ``weight_mask`` buffer; ``weight`` is recomputed
  as their product before every forward, so fine-tuning cannot revive a pruned weight. The
  tensors keep their size: this saves storage after compression, not MACs.
  ``remove_masks`` makes the pruning permanent (plain ``weight`` parameters again).
* **Structured** (``prune_attention_heads``, ``prune_mlp_units``, ``prune_block_channels``):
  whole attention heads, MLP hidden units or residual-block channels are cut out of the
  tensors, so the model is smaller and computes less (its MAC counts follow the new shapes).

FBS blocks (``dynvit.models.fbs_resnet`` / ``fbs_efficientnet``) read their convolution
weights in functional code at inference (sliced, BatchNorm folded, cached by tensor
identity) without calling the convolution modules, so torch's per-layer hooks would not
refresh ``weight`` there: inference after fine-tuning would use the weights of the last
training forward. Pruning registers one more pre-hook on such blocks (and on DynamicViT keep
predictors) that recomputes the masked weights of the layers inside and drops the FBS caches
whenever the trained values or the masks changed. A forward hook then leaves ``weight``
without autograd history after each pass, so a pruned model can be deep-copied (EMA,
``dense_copy``) after a training step, which plain ``torch.nn.utils.prune`` refuses.
"""
import copy
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.utils import prune
from timm.layers import Attention, Mlp
from timm.models.resnet import BasicBlock

from ..layers.channel_gate import ChannelGate
from ..layers.keep_predictor import KeepPredictor
from ..layers.token_ops import is_timm_attention
from ..models._fbs import GatedBlock

__all__ = [
    'prunable_layers', 'masked_layers', 'magnitude_prune', 'remove_masks', 'sparsity', 'SparsityStats',
    'cubic_sparsity', 'IterativePruner',
    'attention_blocks', 'basic_blocks', 'head_scores', 'mlp_unit_scores', 'channel_scores',
    'shrink_attention', 'shrink_mlp', 'shrink_basic_block',
    'prune_attention_heads', 'prune_mlp_units', 'prune_block_channels',
    'pruned_structure', 'apply_structure', 'save_pruned', 'load_pruned',
]

Include = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]
KeepIndices = Sequence[Optional[Sequence[int]]]

# include keywords (everything else is an fnmatch pattern over module names)
GROUPS = ('default', 'all', 'head', 'embed', 'predictor', 'gate')
_CLASSIFIER_NAMES = ('head', 'head_cls', 'head_dist', 'fc', 'classifier')
_FBS_CACHES = ('_fbs_folded', '_fbs_transposed')
STRUCTURE_KEY = 'pruned_structure'


# ---------------------------------------------------------------------------------------------
# which layers
# ---------------------------------------------------------------------------------------------

def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d))


def _group_prefixes(model: nn.Module) -> Dict[str, Tuple[str, ...]]:
    """Module-name prefixes (with a trailing dot) of the groups that are not pruned by default."""
    predictor, gate, embed = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, KeepPredictor):
            predictor.append(name + '.')
        elif isinstance(m, ChannelGate):
            gate.append(name + '.')
        elif name.split('.')[-1] == 'patch_embed':
            embed.append(name + '.')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier') or ()
    classifier = {classifier} if isinstance(classifier, str) else set(classifier)
    children = dict(model.named_children())
    classifier |= {n for n in _CLASSIFIER_NAMES if n in children}
    head = [n + '.' for n in sorted(classifier)]
    return dict(head=tuple(head), embed=tuple(embed), predictor=tuple(predictor), gate=tuple(gate))


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` names the module or one of its ancestors (fnmatch wildcards allowed)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + '.*')


def prunable_layers(model: nn.Module, include: Include = None, exclude: Include = None) -> Dict[str, nn.Module]:
    """The ``nn.Linear`` / ``nn.Conv2d`` layers that magnitude pruning acts on, by name.

    By default (``include=None`` or ``'default'``) every such layer except the classifier(s)
    (``head``, ``head_cls``, ``fc``, ...), the patch embedding, the DynamicViT keep predictors
    (``score_predictor.*``) and the FBS gates (``*.gate1.fc`` ...): for a ViT the linears of the
    transformer blocks, for a CNN its convolutions.

    Args:
        model: Any model.
        include: What to select: None for the default, or a name / a sequence of names, each a
            group (``'default'``, ``'all'``, ``'head'``, ``'embed'``, ``'predictor'``, ``'gate'``)
            or an fnmatch pattern over module names that also selects the layers below a matching
            module (``'blocks.0'``, ``'*.mlp.*'``); or a callable ``(name, module) -> bool``.
            ``('default', 'head')`` adds the classifier to the default.
        exclude: The same forms; layers it selects are left out.

    Returns:
        ``{name: layer}`` in model order.
    """
    layers = {n: m for n, m in model.named_modules() if _is_weight_layer(m)}
    prefixes = _group_prefixes(model)
    special = sum(prefixes.values(), ())

    def selector(spec: Include, default: bool) -> Callable[[str, nn.Module], bool]:
        if spec is None:
            return (lambda n, m: not (n + '.').startswith(special)) if default else (lambda n, m: False)
        if callable(spec):
            return spec
        specs = [spec] if isinstance(spec, str) else list(spec)
        tests = []
        for s in specs:
            if s == 'default':
                tests.append(lambda n, m: not (n + '.').startswith(special))
            elif s == 'all':
                tests.append(lambda n, m: True)
            elif s in prefixes:
                tests.append(lambda n, m, p=prefixes[s]: (n + '.').startswith(p))
            else:
                tests.append(lambda n, m, p=s: _matches(n, p))
        return lambda n, m: any(t(n, m) for t in tests)

    inc, exc = selector(include, True), selector(exclude, False)
    return {n: m for n, m in layers.items() if inc(n, m) and not exc(n, m)}


def _pruning_hooks(module: nn.Module) -> List[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def masked_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The layers that carry a pruning mask (``weight_orig`` / ``weight_mask``), by name."""
    return {n: m for n, m in model.named_modules() if _pruning_hooks(m)}


# ---------------------------------------------------------------------------------------------
# keeping masked weights current where layers are not called (FBS inference, keep predictors)
# ---------------------------------------------------------------------------------------------

def _masked_weight(module: nn.Module, name: str = 'weight') -> torch.Tensor:
    return getattr(module, name + '_orig') * getattr(module, name + '_mask')


def _refresh(module: nn.Module) -> None:
    """Recomputes ``weight = weight_orig * weight_mask`` when it may be stale.

    With autograd the product is always recomputed (it must be part of this pass's graph).
    Without, only when the trained values, the mask, the device/dtype or the inference mode
    changed since the last product; then the FBS caches keyed on the old tensor are dropped
    (a new tensor can reuse a freed address, which would fool their ``data_ptr`` key).
    """
    keys = module.__dict__.setdefault('_prune_refresh_keys', {})
    for hook in _pruning_hooks(module):
        name = hook._tensor_name
        orig, mask = getattr(module, name + '_orig'), getattr(module, name + '_mask')
        key = None
        if not torch.is_grad_enabled():
            key = (orig.data_ptr(), orig._version, mask.data_ptr(), mask._version, orig.dtype, orig.device,
                   torch.is_inference_mode_enabled())
            if keys.get(name) == key:
                continue
        setattr(module, name, orig * mask)
        keys[name] = key
        for cache in _FBS_CACHES:
            module.__dict__.pop(cache, None)


@torch.no_grad()
def _detach_masked_weights(model: nn.Module) -> None:
    """Recomputes every masked ``weight`` without autograd. After a training forward ``weight`` is
    a non-leaf tensor, which ``copy.deepcopy`` refuses (a torch.nn.utils.prune limitation)."""
    for m in model.modules():
        for hook in _pruning_hooks(m):
            setattr(m, hook._tensor_name, _masked_weight(m, hook._tensor_name))
        m.__dict__.pop('_prune_refresh_keys', None)


def _refresh_hook(owner: nn.Module, args: Any) -> None:
    """Forward pre-hook of a module that reads its layers' weights without calling them."""
    for m in owner.modules():
        if _pruning_hooks(m):
            _refresh(m)


def _detach_hook(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: once the pass has used them, masked weights become plain tensors again (the
    graph keeps what backward needs). A ``weight`` left with autograd history would hold the
    graph alive and make ``copy.deepcopy`` fail (EMA copies, ``dynvit.models.dense_copy``)."""
    for m in module.modules():
        for hook in _pruning_hooks(m):
            w = getattr(m, hook._tensor_name, None)
            if isinstance(w, torch.Tensor) and w.grad_fn is not None:
                setattr(m, hook._tensor_name, w.detach())


def _functional_owners(model: nn.Module) -> List[nn.Module]:
    """Modules whose forward reads the weights of their layers directly (functional code)."""
    return [m for m in model.modules() if isinstance(m, (GatedBlock, KeepPredictor))]


def _set_hook(hooks: Dict[int, Any], fn: Callable[..., None], register: Callable[[Any], Any], wanted: bool) -> None:
    ids = [k for k, h in hooks.items() if h is fn]
    if wanted and not ids:
        register(fn)
    elif not wanted:
        for k in ids:
            del hooks[k]


def _sync_hooks(model: nn.Module) -> None:
    """Puts ``_refresh_hook`` on every functional owner that holds masked layers and ``_detach_hook``
    on those owners and the masked layers; removes them where no mask is left."""
    owners = {id(m) for m in _functional_owners(model)}
    for m in model.modules():
        masked_here = bool(_pruning_hooks(m))
        owner = id(m) in owners and any(_pruning_hooks(x) for x in m.modules())
        _set_hook(m._forward_pre_hooks, _refresh_hook, m.register_forward_pre_hook, owner)
        _set_hook(m._forward_hooks, _detach_hook, m.register_forward_hook, owner or masked_here)


# ---------------------------------------------------------------------------------------------
# unstructured magnitude pruning
# ---------------------------------------------------------------------------------------------

def _mask_counts(module: nn.Module) -> Tuple[int, int]:
    """(pruned entries, entries) of a layer's weight according to its mask."""
    mask = getattr(module, 'weight_mask', None)
    n = module.weight_orig.numel() if mask is not None else module.weight.numel()
    return (0 if mask is None else int((mask == 0).sum())), n


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The effective weight, recomputed from the mask (``module.weight`` may be stale)."""
    return _masked_weight(module) if hasattr(module, 'weight_mask') else module.weight


@torch.no_grad()
def magnitude_prune(
        model: nn.Module,
        amount: float,
        scope: str = 'global',
        include: Include = None,
        exclude: Include = None,
) -> Dict[str, nn.Module]:
    """Zeroes the weights of smallest magnitude (Han et al. 2015) until ``amount`` of them are pruned.

    ``amount`` is the target *total* fraction: weights pruned earlier stay pruned and count
    towards it, and the new ones are the smallest among the remaining weights (so calling it
    with growing amounts is iterative pruning; a smaller amount prunes nothing more). Biases
    are not pruned. Masks live in ``weight_mask`` buffers and forward pre-hooks
    (``torch.nn.utils.prune``); call ``remove_masks`` to make the pruning permanent.

    Args:
        model: Any model; dynvit's dynamic ones included.
        amount: Fraction of the selected weights to be zero afterwards, in [0, 1).
        scope: ``'global'``: one magnitude threshold over all selected layers (layers end up
            with different sparsities); ``'layer'``: every layer pruned to ``amount``.
        include, exclude: Which layers, see ``prunable_layers``.

    Returns:
        The pruned layers ``{name: layer}``.
    """
    if isinstance(amount, bool) or not 0.0 <= float(amount) < 1.0:
        raise ValueError(f'amount must be a fraction in [0, 1), got {amount!r}')
    if scope not in ('global', 'layer'):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = prunable_layers(model, include, exclude)
    if not layers:
        raise ValueError('no nn.Linear / nn.Conv2d layer selected for pruning; check include/exclude')
    modules = list(layers.values())
    for m in modules:
        if hasattr(m, 'weight_mask'):
            setattr(m, 'weight', _masked_weight(m))  # torch's pruning ranks what `weight` holds
    if scope == 'layer':
        for m in modules:
            pruned, n = _mask_counts(m)
            extra = int(round(float(amount) * n)) - pruned
            if extra > 0 or not hasattr(m, 'weight_mask'):
                prune.l1_unstructured(m, 'weight', amount=max(extra, 0),
                                      importance_scores=_current_weight(m).abs())
    else:
        counts = [_mask_counts(m) for m in modules]
        extra = int(round(float(amount) * sum(n for _, n in counts))) - sum(p for p, _ in counts)
        if extra > 0 or not all(hasattr(m, 'weight_mask') for m in modules):
            prune.global_unstructured(
                [(m, 'weight') for m in modules], pruning_method=prune.L1Unstructured, amount=max(extra, 0),
                importance_scores={(m, 'weight'): _current_weight(m).abs() for m in modules})
    for m in modules:
        m.__dict__.pop('_prune_refresh_keys', None)
        for cache in _FBS_CACHES:
            m.__dict__.pop(cache, None)
    _sync_hooks(model)
    return layers


@torch.no_grad()
def remove_masks(model: nn.Module) -> nn.Module:
    """Makes magnitude pruning permanent: every masked layer gets a plain ``weight`` parameter
    holding its masked values (zeros stay zeros but are no longer enforced), and the masks and
    hooks go. Do this before saving with ``dynvit.save_model`` or exporting.

    Returns:
        ``model``.
    """
    for m in model.modules():
        if _pruning_hooks(m):
            for hook in _pruning_hooks(m):
                name = hook._tensor_name
                setattr(m, name, _masked_weight(m, name))  # remove() reads `weight`, which may be stale
                prune.remove(m, name)
            m.__dict__.pop('_prune_refresh_keys', None)
            for cache in _FBS_CACHES:
                m.__dict__.pop(cache, None)
    _sync_hooks(model)
    return model


@dataclass
class SparsityStats:
    """Zero weights per layer and overall.

    Attributes:
        counts: ``{layer name: (zero weights, weights)}``.
    """
    counts: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @property
    def layers(self) -> Dict[str, float]:
        """Fraction of zero weights of each layer."""
        return {n: z / max(t, 1) for n, (z, t) in self.counts.items()}

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.counts.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.counts.values())

    @property
    def overall(self) -> float:
        """Fraction of zero weights over all the layers."""
        return self.zeros / max(self.total, 1)

    def to_dict(self) -> Dict[str, Any]:
        return dict(overall=self.overall, zeros=self.zeros, total=self.total, layers=self.layers)

    def __str__(self) -> str:
        width = max([5] + [len(n) for n in self.counts])
        rows = [f'{"layer":<{width}} {"weights":>10} {"zero":>7}']
        rows += [f'{n:<{width}} {t:>10} {z / max(t, 1):>7.1%}' for n, (z, t) in self.counts.items()]
        rows.append(f'{"total":<{width}} {self.total:>10} {self.overall:>7.1%}')
        return '\n'.join(rows)


@torch.no_grad()
def sparsity(model: nn.Module, include: Include = None, exclude: Include = None) -> SparsityStats:
    """Counts the zero weights of the prunable layers (``prunable_layers``) and of every masked layer.

    Zeros are counted in the effective weights (``weight_orig * weight_mask`` for masked
    layers), biases are not counted.
    """
    layers = {**prunable_layers(model, include, exclude), **masked_layers(model)}
    names = [n for n, _ in model.named_modules() if n in layers]  # model order
    counts = {}
    for n in names:
        w = _current_weight(layers[n])
        counts[n] = (int((w == 0).sum()), w.numel())
    return SparsityStats(counts)


# ---------------------------------------------------------------------------------------------
# gradual schedule
# ---------------------------------------------------------------------------------------------

def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: ``s_t = s_f + (s_i - s_f) (1 - t / n)^3``.

    Sparsity rises fast at first, while many redundant weights remain, then levels off at
    ``final``.

    Args:
        step: t; clamped to [0, total_steps].
        total_steps: n pruning steps (0: the final sparsity at once).
        final: s_f, in [0, 1).
        initial: s_i, in [0, final].

    Returns:
        The sparsity at step t.
    """
    if not 0.0 <= initial <= final < 1.0:
        raise ValueError(f'need 0 <= initial <= final < 1, got initial={initial}, final={final}')
    if total_steps < 0:
        raise ValueError(f'total_steps must be >= 0, got {total_steps}')
    if total_steps == 0:
        return float(final)
    t = min(max(step, 0), total_steps) / total_steps
    return float(final + (initial - final) * (1.0 - t) ** 3)


class IterativePruner:
    """Prune -> fine-tune cycles along the cubic schedule (Han et al.; Zhu & Gupta).

    Each ``step()`` raises the pruned fraction to the schedule's next value by magnitude
    among the weights still present; fine-tune between steps::

        pruner = IterativePruner(model, final_amount=0.8, steps=10)
        for _ in range(pruner.steps):
            pruner.step()
            fine_tune(model, epochs=1)   # the masks keep pruned weights at zero
        remove_masks(model)

    Args:
        model: The model to prune.
        final_amount: Fraction of the selected weights pruned after the last step.
        steps: Number of pruning steps.
        scope: ``'global'`` or ``'layer'``, as for ``magnitude_prune``.
        initial_amount: The schedule's starting sparsity (reached at step 0, not applied).
        include, exclude: Which layers, see ``prunable_layers``.
    """

    def __init__(
            self,
            model: nn.Module,
            final_amount: float,
            steps: int,
            scope: str = 'global',
            initial_amount: float = 0.0,
            include: Include = None,
            exclude: Include = None,
    ) -> None:
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f'steps must be a positive integer, got {steps!r}')
        cubic_sparsity(0, steps, final_amount, initial_amount)  # validates the amounts
        if scope not in ('global', 'layer'):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.model = model
        self.final_amount = float(final_amount)
        self.initial_amount = float(initial_amount)
        self.steps = int(steps)
        self.scope = scope
        names = list(prunable_layers(model, include, exclude))
        if not names:
            raise ValueError('no nn.Linear / nn.Conv2d layer selected for pruning; check include/exclude')
        self._include = frozenset(names)  # fixed at construction: the same layers every step
        self.step_count = 0
        self.amount = 0.0

    @property
    def done(self) -> bool:
        """Whether the final sparsity has been reached."""
        return self.step_count >= self.steps

    def step(self) -> float:
        """Prunes to the next value of the schedule (nothing more once done); returns it."""
        if not self.done:
            self.step_count += 1
            self.amount = cubic_sparsity(self.step_count, self.steps, self.final_amount, self.initial_amount)
            magnitude_prune(self.model, self.amount, self.scope,
                            include=lambda n, m: n in self._include)
        return self.amount

    def state_dict(self) -> Dict[str, Any]:
        """Progress, to resume with ``load_state_dict`` (the masks are in the model's state dict)."""
        return dict(step_count=self.step_count, amount=self.amount)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step_count = int(state['step_count'])
        self.amount = float(state['amount'])


# ---------------------------------------------------------------------------------------------
# structured pruning: shrinking tensors
# ---------------------------------------------------------------------------------------------

def _check_unmasked(*modules: nn.Module) -> None:
    for m in modules:
        if m is not None and any(_pruning_hooks(x) for x in m.modules()):
            raise ValueError(f'{type(m).__name__} carries magnitude-pruning masks: call remove_masks(model) before '
                             f'structured pruning (structured first, then unstructured, needs no such call)')


def _as_index(keep: Sequence[int], n: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(list(keep) if not isinstance(keep, torch.Tensor) else keep, dtype=torch.long).flatten()
    idx = idx.sort().values
    if idx.numel() == 0 or idx[0] < 0 or idx[-1] >= n or idx.unique().numel() != idx.numel():
        raise ValueError(f'{what}: keep must be distinct indices in [0, {n}), at least one; got {idx.tolist()}')
    return idx


def _new_param(old: Optional[torch.Tensor], value: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    if old is None:
        return None
    return nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _slice_weight(layer: nn.Module, out_idx: Optional[torch.Tensor], in_idx: Optional[torch.Tensor]) -> Tuple[int, int]:
    """Keeps outputs ``out_idx`` (dim 0 of the weight, and the bias) and inputs ``in_idx`` (dim 1) of
    a Linear or Conv2d, in place; returns the new (outputs, inputs)."""
    w = layer.weight  # [out, in, ...]
    b = layer.bias
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        b = None if b is None else b.index_select(0, out_idx.to(b.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    layer.weight = _new_param(layer.weight, w)
    if layer.bias is not None:
        layer.bias = _new_param(layer.bias, b)
    return w.shape[0], w.shape[1]


def _slice_linear(linear: nn.Linear, out_idx: Optional[torch.Tensor] = None,
                  in_idx: Optional[torch.Tensor] = None) -> None:
    """Keeps rows ``out_idx`` (outputs) and columns ``in_idx`` (inputs) of a Linear, in place."""
    linear.out_features, linear.in_features = _slice_weight(linear, out_idx, in_idx)


def _slice_conv(conv: nn.Conv2d, out_idx: Optional[torch.Tensor] = None,
                in_idx: Optional[torch.Tensor] = None) -> None:
    """Keeps output channels ``out_idx`` and input channels ``in_idx`` of a dense Conv2d, in place."""
    if conv.groups != 1:
        raise ValueError(f'cannot slice a grouped convolution (groups={conv.groups})')
    conv.out_channels, conv.in_channels = _slice_weight(conv, out_idx, in_idx)
    for cache in _FBS_CACHES:
        conv.__dict__.pop(cache, None)


def _slice_batch_norm(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    """Keeps channels ``idx`` of a BatchNorm, in place (affine parameters and running statistics)."""
    if bn.weight is not None:
        bn.weight = _new_param(bn.weight, bn.weight.index_select(0, idx.to(bn.weight.device)))
        bn.bias = _new_param(bn.bias, bn.bias.index_select(0, idx.to(bn.bias.device)))
    for name in ('running_mean', 'running_var'):
        buf = getattr(bn, name)
        if buf is not None:
            setattr(bn, name, buf.index_select(0, idx.to(buf.device)).clone())
    bn.num_features = idx.numel()


def _check_attention(attn: nn.Module, where: str = 'attention') -> None:
    if not (isinstance(attn, Attention) and is_timm_attention(attn) and isinstance(attn.qkv, nn.Linear)):
        raise ValueError(f'{where}: head pruning needs timm\'s Attention (or dynvit\'s PolicyAttention) with a '
                         f'fused qkv Linear, got {type(attn).__name__}')
    norm = getattr(attn, 'norm', None)
    if norm is not None and not isinstance(norm, nn.Identity):
        raise ValueError(f'{where}: attention with scale_norm (a LayerNorm over all heads) is not supported: '
                         f'removing heads changes the normalisation of the others')
    if attn.qkv.out_features != 3 * attn.num_heads * attn.head_dim:
        raise ValueError(f'{where}: qkv has {attn.qkv.out_features} outputs, expected 3 * heads * head_dim')


def _check_mlp(mlp: nn.Module, where: str = 'mlp') -> None:
    if not (isinstance(mlp, Mlp) and type(mlp).forward is Mlp.forward and isinstance(mlp.fc1, nn.Linear)
            and isinstance(mlp.fc2, nn.Linear)):
        raise ValueError(f'{where}: MLP-unit pruning needs a timm Mlp (fc1 -> act -> fc2) with Linear layers, got '
                         f'{type(mlp).__name__} (gated MLPs such as SwiGLU are not supported)')
    if not isinstance(mlp.norm, nn.Identity):
        raise ValueError(f'{where}: an MLP with a norm on its hidden units (scale_mlp_norm) is not supported: '
                         f'removing units changes the normalisation of the others')


def _check_basic_block(block: nn.Module, where: str = 'block') -> None:
    if not isinstance(block, BasicBlock):
        raise ValueError(f'{where}: channel pruning supports timm BasicBlock / FBSBasicBlock, got '
                         f'{type(block).__name__}')
    if not isinstance(block.aa, nn.Identity):
        raise ValueError(f'{where}: anti-aliasing (aa_layer) after conv1 is not supported')
    if not isinstance(block.bn1, nn.BatchNorm2d):
        raise ValueError(f'{where}: bn1 must be a BatchNorm2d, got {type(block.bn1).__name__}')
    if block.conv1.groups != 1 or block.conv2.groups != 1:
        raise ValueError(f'{where}: grouped convolutions are not supported')


@torch.no_grad()
def shrink_attention(attn: Attention, keep: Sequence[int]) -> Attention:
    """Keeps the heads ``keep`` of a timm ``Attention`` (``PolicyAttention`` included), in place.

    The qkv rows of the other heads (layout ``(three h d)``), the matching output-gate rows
    and the proj columns (layout ``(h d)``) are cut out; ``head_dim`` and the softmax scale
    stay, ``num_heads`` and ``attn_dim`` become ``len(keep)`` and ``len(keep) * head_dim``.

    Args:
        attn: The attention module.
        keep: Indices of the heads to keep.

    Returns:
        ``attn``.
    """
    _check_attention(attn)
    _check_unmasked(attn)
    H, D = attn.num_heads, attn.head_dim
    heads = _as_index(keep, H, 'shrink_attention')
    dims = (heads[:, None] * D + torch.arange(D)).flatten()  # [H' * D] rows of '(h d)'
    qkv_rows = (torch.arange(3)[:, None] * H * D + dims).flatten()  # [3 * H' * D] rows of '(three h d)'
    _slice_linear(attn.qkv, out_idx=qkv_rows)
    if getattr(attn, 'gate', None) is not None:
        _slice_linear(attn.gate, out_idx=dims)
    _slice_linear(attn.proj, in_idx=dims)
    attn.num_heads = heads.numel()
    attn.attn_dim = heads.numel() * D
    return attn


@torch.no_grad()
def shrink_mlp(mlp: Mlp, keep: Sequence[int]) -> Mlp:
    """Keeps the hidden units ``keep`` of a timm ``Mlp``: rows of ``fc1``, columns of ``fc2``. In place.

    Returns:
        ``mlp``.
    """
    _check_mlp(mlp)
    _check_unmasked(mlp)
    idx = _as_index(keep, mlp.fc1.out_features, 'shrink_mlp')
    _slice_linear(mlp.fc1, out_idx=idx)
    _slice_linear(mlp.fc2, in_idx=idx)
    return mlp


@torch.no_grad()
def shrink_basic_block(block: BasicBlock, keep: Sequence[int]) -> BasicBlock:
    """Keeps the channels ``keep`` between ``conv1`` and ``conv2`` of a ResNet basic block, in place.

    ``conv1`` keeps those output channels, ``bn1`` those channels, ``conv2`` those input
    channels. In an ``FBSBasicBlock`` the gate of ``conv1`` (``gate1``, one output per conv1
    channel) keeps those outputs and the gate of ``conv2`` (``gate2``, which reads conv1's
    pooled output) those inputs; the density then applies to the remaining channels. The
    block output (``conv2``'s channels, added to the shortcut) is unchanged.

    Returns:
        ``block``.
    """
    _check_basic_block(block)
    _check_unmasked(block)
    idx = _as_index(keep, block.conv1.out_channels, 'shrink_basic_block')
    _slice_conv(block.conv1, out_idx=idx)
    _slice_batch_norm(block.bn1, idx)
    _slice_conv(block.conv2, in_idx=idx)
    if isinstance(getattr(block, 'gate1', None), ChannelGate):
        _slice_linear(block.gate1.fc, out_idx=idx)
    if isinstance(getattr(block, 'gate2', None), ChannelGate):
        _slice_linear(block.gate2.fc, in_idx=idx)
    block.__dict__.pop('_strategy_cache', None)  # FBS 'auto' timings were for the old shapes
    return block


# ---------------------------------------------------------------------------------------------
# structured pruning: scores and selection
# ---------------------------------------------------------------------------------------------

def attention_blocks(model: nn.Module) -> List[nn.Module]:
    """The transformer blocks of a ViT (``model.blocks``), each with ``attn`` and ``mlp``."""
    blocks = getattr(model, 'blocks', None)
    if blocks is None or not all(hasattr(b, 'attn') and hasattr(b, 'mlp') for b in blocks):
        raise ValueError(f'{type(model).__name__} has no timm transformer blocks (model.blocks with attn and mlp)')
    return list(blocks)


def basic_blocks(model: nn.Module) -> List[BasicBlock]:
    """The ResNet basic blocks (``FBSBasicBlock`` included), in model order."""
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no ResNet BasicBlock; channel pruning supports basic-block '
                         f'ResNets (FBS ResNet, timm resnet18/34)')
    return blocks


def _norm(x: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    return x.detach().float().abs().pow(p).sum(dim).pow(1.0 / p)


def head_scores(attn: Attention, p: float = 1.0) -> torch.Tensor:
    """``[H]`` Lp norm of each head's weights: its q, k, v rows of ``qkv`` and its ``proj`` columns."""
    _check_attention(attn)
    H, D = attn.num_heads, attn.head_dim
    qkv = attn.qkv.weight.detach().reshape(3, H, D, -1).permute(1, 0, 2, 3).reshape(H, -1)  # [H, 3 * D * C]
    proj = attn.proj.weight.detach().reshape(-1, H, D).permute(1, 0, 2).reshape(H, -1)  # [H, C_out * D]
    return _norm(torch.cat([qkv, proj], dim=1), p, 1)


def mlp_unit_scores(mlp: Mlp, p: float = 1.0) -> torch.Tensor:
    """``[hidden]`` Lp norm of each hidden unit's weights: its ``fc1`` row and ``fc2`` column."""
    _check_mlp(mlp)
    return _norm(torch.cat([mlp.fc1.weight.detach(), mlp.fc2.weight.detach().t()], dim=1), p, 1)


def channel_scores(block: BasicBlock, p: float = 1.0) -> torch.Tensor:
    """``[C]`` Lp norm of each conv1 channel's weights: its ``conv1`` filter with ``bn1``'s scale
    folded in (BatchNorm renormalises the raw filter) and its ``conv2`` input slice."""
    _check_basic_block(block)
    bn = block.bn1
    scale = torch.rsqrt(bn.running_var + bn.eps) if bn.track_running_stats and bn.running_var is not None \
        else torch.ones(bn.num_features, device=block.conv1.weight.device)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    w1 = block.conv1.weight.detach() * scale.reshape(-1, 1, 1, 1)  # [C, C_in, kh, kw]
    w2 = block.conv2.weight.detach().transpose(0, 1)  # [C, C_out, kh, kw]
    return _norm(torch.cat([w1.flatten(1), w2.flatten(1)], dim=1), p, 1)


def _select(
        scores: List[torch.Tensor],
        amount: float,
        scope: str,
        round_to: int = 1,
) -> List[torch.Tensor]:
    """Indices to keep per block: the highest scores, ``amount`` of the structures removed per
    block ('layer') or over all blocks ('global'), at least one kept per block, kept counts
    rounded up to a multiple of ``round_to``."""
    if isinstance(amount, bool) or not 0.0 <= float(amount) < 1.0:
        raise ValueError(f'amount must be a fraction in [0, 1), got {amount!r}')
    if scope not in ('global', 'layer'):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    scores = [s.float().cpu() for s in scores]
    sizes = [s.numel() for s in scores]
    if scope == 'layer':
        counts = [n - int(round(float(amount) * n)) for n in sizes]
    else:
        flat = torch.cat(scores)
        remove = int(round(float(amount) * flat.numel()))
        removed = torch.zeros(flat.numel(), dtype=torch.bool)
        removed[flat.argsort()[:remove]] = True  # ascending: the weakest structures over all blocks
        counts = [int((~r).sum()) for r in removed.split(sizes)]
    counts = [min(n, max(1, math.ceil(c / round_to) * round_to)) for c, n in zip(counts, sizes)]
    return [s.topk(c).indices.sort().values for s, c in zip(scores, counts)]


def _block_indices(blocks: Optional[Sequence[int]], n: int) -> List[int]:
    chosen = list(range(n)) if blocks is None else [int(b) for b in blocks]
    if any(not 0 <= b < n for b in chosen):
        raise ValueError(f'blocks must be indices in [0, {n}), got {chosen}')
    return chosen


def _structured(
        modules: List[nn.Module],
        score_fn: Callable[[nn.Module, float], torch.Tensor],
        shrink_fn: Callable[[nn.Module, Sequence[int]], nn.Module],
        amount: Optional[float],
        p: float,
        scope: str,
        blocks: Optional[Sequence[int]],
        keep: Optional[KeepIndices],
        round_to: int,
) -> List[Optional[torch.Tensor]]:
    if p <= 0:
        raise ValueError(f'p must be positive, got {p}')
    if isinstance(round_to, bool) or int(round_to) != round_to or round_to < 1:
        raise ValueError(f'round_to must be a positive integer, got {round_to!r}')
    chosen = _block_indices(blocks, len(modules))
    out: List[Optional[torch.Tensor]] = [None] * len(modules)
    if keep is not None:
        if amount is not None:
            raise ValueError('give either amount or keep, not both')
        if len(keep) != len(modules):
            raise ValueError(f'keep needs one entry (indices or None) per block ({len(modules)}), got {len(keep)}')
        selected = {i: keep[i] for i in chosen if keep[i] is not None}
    else:
        if amount is None:
            raise ValueError('give amount (fraction removed) or keep (indices kept per block)')
        for i in chosen:  # refuse before anything is scored or cut
            _check_unmasked(modules[i])
        kept = _select([score_fn(modules[i], p) for i in chosen], amount, scope, int(round_to))
        selected = dict(zip(chosen, kept))
    for i in selected:
        _check_unmasked(modules[i])
    for i, k in selected.items():
        shrink_fn(modules[i], k)
        out[i] = torch.as_tensor(k, dtype=torch.long).flatten().sort().values
    return out


def prune_attention_heads(
        model: nn.Module,
        amount: Optional[float] = None,
        p: float = 1.0,
        scope: str = 'layer',
        blocks: Optional[Sequence[int]] = None,
        keep: Optional[KeepIndices] = None,
) -> List[Optional[torch.Tensor]]:
    """Removes the attention heads with the smallest weight norms (``head_scores``) from a ViT.

    Works on DynamicViT, Evo-ViT and timm ``VisionTransformer`` blocks; the attention code of
    all of them reads ``num_heads`` / ``head_dim`` from the module. At least one head stays in
    every block. Create the optimizer afterwards: the pruned layers get new parameters.

    Note: Evo-ViT ranks tokens by the class attention averaged over heads, so removing a head
    changes the ranking, while zeroing its weights would leave it voting with a uniform row.

    Args:
        model: The ViT (modified in place).
        amount: Fraction of the heads to remove, per block (``scope='layer'``) or over the
            selected blocks (``'global'``).
        p: Norm order of the scores (1 or 2).
        scope: ``'layer'`` or ``'global'``.
        blocks: Indices of the blocks to prune (default all).
        keep: Instead of ``amount``: per block the head indices to keep (None: leave the block).

    Returns:
        Per block the kept head indices (original numbering), None for blocks left unchanged.
    """
    return _structured([b.attn for b in attention_blocks(model)], head_scores, shrink_attention,
                       amount, p, scope, blocks, keep, 1)


def prune_mlp_units(
        model: nn.Module,
        amount: Optional[float] = None,
        p: float = 1.0,
        scope: str = 'layer',
        blocks: Optional[Sequence[int]] = None,
        keep: Optional[KeepIndices] = None,
        round_to: int = 1,
) -> List[Optional[torch.Tensor]]:
    """Removes the MLP hidden units with the smallest weight norms (``mlp_unit_scores``) from a ViT.

    Args:
        model: The ViT (modified in place).
        amount: Fraction of the hidden units to remove, per block or over the blocks (``scope``).
        p: Norm order of the scores (1 or 2).
        scope: ``'layer'`` or ``'global'``.
        blocks: Indices of the blocks to prune (default all).
        keep: Instead of ``amount``: per block the unit indices to keep (None: leave the block).
        round_to: Round each block's kept units up to a multiple of this (e.g. 8 for fast kernels).

    Returns:
        Per block the kept unit indices, None for blocks left unchanged.
    """
    return _structured([b.mlp for b in attention_blocks(model)], mlp_unit_scores, shrink_mlp,
                       amount, p, scope, blocks, keep, round_to)


def prune_block_channels(
        model: nn.Module,
        amount: Optional[float] = None,
        p: float = 1.0,
        scope: str = 'layer',
        blocks: Optional[Sequence[int]] = None,
        keep: Optional[KeepIndices] = None,
        round_to: int = 1,
) -> List[Optional[torch.Tensor]]:
    """Removes the inner channels (conv1 outputs = conv2 inputs) with the smallest weight norms
    (``channel_scores``) from every basic block of a ResNet (FBS ResNet or timm's).

    FBS gates shrink with them (see ``shrink_basic_block``), and at inference the gates then
    keep ``ceil(density * C')`` of the ``C'`` remaining channels. The block outputs, which
    the residual connections tie together across blocks, are not pruned.

    Args:
        model: The ResNet (modified in place).
        amount: Fraction of the channels to remove, per block or over the blocks (``scope``).
        p: Norm order of the scores (1 or 2).
        scope: ``'layer'`` or ``'global'``.
        blocks: Indices into ``basic_blocks(model)`` (default all).
        keep: Instead of ``amount``: per block the channel indices to keep (None: leave the block).
        round_to: Round each block's kept channels up to a multiple of this.

    Returns:
        Per block the kept channel indices, None for blocks left unchanged.
    """
    return _structured(basic_blocks(model), channel_scores, shrink_basic_block,
                       amount, p, scope, blocks, keep, round_to)


# ---------------------------------------------------------------------------------------------
# saving and rebuilding structurally pruned models
# ---------------------------------------------------------------------------------------------

def pruned_structure(model: nn.Module) -> Dict[str, List[int]]:
    """The per-block sizes that structured pruning changes, read from the modules.

    ViTs: ``{'num_heads': [...], 'mlp_hidden': [...]}`` one entry per block; basic-block
    ResNets: ``{'block_widths': [...]}`` the conv1 channels of each block (``basic_blocks``
    order). ``apply_structure`` shrinks a freshly built model of the same architecture to it.
    """
    if hasattr(model, 'blocks') and all(hasattr(b, 'attn') and hasattr(b, 'mlp') for b in model.blocks):
        out = dict(num_heads=[int(b.attn.num_heads) for b in model.blocks])
        if all(isinstance(getattr(b.mlp, 'fc1', None), nn.Linear) for b in model.blocks):
            out['mlp_hidden'] = [int(b.mlp.fc1.out_features) for b in model.blocks]
        return out
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if blocks:
        return dict(block_widths=[int(b.conv1.out_channels) for b in blocks])
    raise ValueError(f'{type(model).__name__}: structured pruning supports timm ViT blocks and ResNet basic blocks')


def apply_structure(model: nn.Module, structure: Dict[str, Sequence[int]]) -> nn.Module:
    """Shrinks a model built with the original sizes to ``structure`` (from ``pruned_structure``).

    The first heads / units / channels are kept: the weights are meant to be loaded afterwards.

    Returns:
        ``model``.
    """
    unknown = set(structure) - {'num_heads', 'mlp_hidden', 'block_widths'}
    if unknown:
        raise ValueError(f'unknown structure entries {sorted(unknown)}')
    current = pruned_structure(model)
    for key, sizes in structure.items():
        if key not in current:
            raise ValueError(f'{type(model).__name__} has no {key!r} to shrink (it has {sorted(current)})')
        have = current[key]
        if len(sizes) != len(have) or any(int(s) < 1 or int(s) > h for s, h in zip(sizes, have)):
            raise ValueError(f'{key}: {list(sizes)} does not fit the model, whose blocks have {have}')
        keep = [list(range(int(s))) if int(s) < h else None for s, h in zip(sizes, have)]
        fn = dict(num_heads=prune_attention_heads, mlp_hidden=prune_mlp_units, block_widths=prune_block_channels)[key]
        fn(model, keep=keep)
    return model


def save_pruned(model: nn.Module, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """``dynvit.save_model`` for a pruned model; ``load_pruned`` rebuilds it.

    The per-block sizes (``pruned_structure``) go into the file's ``extra`` metadata under
    ``'pruned_structure'``: the model constructors build uniform blocks, so the stored
    ``model_args`` alone would rebuild the unpruned shapes. Magnitude-pruning masks are made
    permanent in the saved copy (``remove_masks`` on a copy; ``model`` keeps its masks).

    Args:
        model: A dynvit model created by name.
        path: Target ``.safetensors`` file.
        extra: More JSON-serialisable metadata.
    """
    from ..models import save_model

    target = model
    if masked_layers(model):
        _detach_masked_weights(model)  # in case a layer ran outside a hooked forward: deepcopy needs leaves
        target = remove_masks(copy.deepcopy(model))
    meta = dict(extra or {})
    meta[STRUCTURE_KEY] = pruned_structure(target)
    meta['weight_sparsity'] = sparsity(target).overall
    save_model(target, path, extra=meta)


def load_pruned(path: str, **kwargs: Any) -> nn.Module:
    """Rebuilds a model saved by ``save_pruned``: ``dynvit.load_model`` reads the stored
    ``pruned_structure`` and shrinks the blocks before loading the weights.

    Args:
        path: A dynvit ``.safetensors`` file.
        **kwargs: Override stored model arguments (as for ``dynvit.load_model``).
    """
    from ..models import load_model

    return load_model(path, **kwargs)
