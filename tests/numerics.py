"""How far two float32 computations of the same network may differ, and the decisions that sit
within that distance of their threshold.

Tolerances follow from the computation, not from one machine's rounding:

* The same kernels on the same data (a saved and reloaded model, keep 1.0 against dense timm,
  one model run twice) give the same bits: compare with ``torch.equal``.
* The same network computed in another order (another CPU's kernels, another batch size,
  masked against gathered tokens, compiled, ONNX Runtime, a recording made on another machine)
  rounds differently. Each matrix-product layer rounds its results with a relative error of a
  few float32 epsilons, and to first order these errors add up along the path to the output, so
  outputs differ by at most about ``EPS * depth * max|output|`` (``rounding_tolerance``), where
  ``depth`` counts the matrix products a value passes through (``matmul_depth``). Measured: the
  zoo's logits under ``ATEN_CPU_CAPABILITY=default`` or ``MKL_ENABLE_INSTRUCTIONS=SSE4_2
  ONEDNN_MAX_CPU_ISA=SSE41`` move by 4% to 20% of this bound.
* Discrete outputs (kept tokens, channels, merges, top-1) are compared exactly, except where the
  decision itself sat within rounding of its threshold: two scores at a top-k boundary, a merge
  partner's runner-up or a threshold closer than the rounding tolerance. ``decision_margins``
  finds those images (every ``topk``, ``sort`` (where its order is cut, or scattered back whole),
  ``max``/``argmax`` and comparison with a number in the forward, recorded per image), and ``assert_matches`` reports them with a
  ``NearTieWarning`` instead of failing, and fails for any other difference.
"""
import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

EPS = torch.finfo(torch.float32).eps  # 1.19e-7: one float32 rounding, relative
SENTINEL = 1e30  # values beyond it are set, not computed (a lead that ranks prefix tokens first)


class NearTieWarning(UserWarning):
    """A recorded decision sat within rounding of its threshold, so that image was not compared."""


def matmul_depth(model: nn.Module) -> int:
    """Matrix products in ``model``: every Linear and convolution, and the two products of every
    attention (``q k^T`` and ``attn v``), a bound on those a value passes through."""
    convs = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return sum(isinstance(m, convs) for m in model.modules()) + 2 * sum(hasattr(m, 'qkv') for m in model.modules())


def tolerance(depth: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """``eps(dtype) * depth * max(scale, 1)``: what rounding explains after ``depth`` rounded
    products on values of magnitude ``scale`` (at least 1: normalised activations inside a network
    are of that size even where an output is small)."""
    return torch.finfo(dtype).eps * depth * max(float(torch.as_tensor(scale).detach().abs().max()), 1.0)


def rounding_tolerance(model: nn.Module, reference: torch.Tensor, depth: Optional[int] = None) -> float:
    """The largest difference rounding alone explains between two computations of ``model`` whose
    outputs are like ``reference``: ``tolerance(matmul_depth(model), max|reference|)`` in the
    reference's precision (see the module docstring)."""
    depth = matmul_depth(model) if depth is None else depth
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    return tolerance(depth, reference.detach().abs().max(), dtype)


aten = torch.ops.aten
# selection op -> (position of `dim` among the arguments, its default, what it picks: 'k' (topk), 'order'
# (a sort: a decision only where the order is cut, see _Margins), 'best' (max, argmax, ...))
_SELECTIONS = {aten.topk.default: (2, -1, 'k'), aten.sort.default: (1, -1, 'order'), aten.sort.stable: (None, -1, 'order'),
               aten.max.dim: (1, None, 'best'), aten.min.dim: (1, None, 'best'), aten.argmax.default: (1, None, 'best'),
               aten.argmin.default: (1, None, 'best')}
_COMPARISONS = {aten.ge.Scalar, aten.gt.Scalar, aten.le.Scalar, aten.lt.Scalar}
_SCATTERS = {aten.scatter.src, aten.scatter_.src, aten.scatter.value, aten.scatter_.value}


def _selection_gaps(func, args, kwargs) -> Optional[torch.Tensor]:
    """``[rows...]`` the gap between the chosen and the nearest unchosen value of a selection op."""
    pos, default, picks = _SELECTIONS[func]
    dim = args[pos] if pos is not None and len(args) > pos else kwargs.get('dim', default)
    if picks == 'order' or dim is None or args[0].ndim < 2 or dim % args[0].ndim == 0:  # whole tensor or images
        return None
    v = args[0].detach().movedim(dim, -1).sort(dim=-1).values  # ascending
    if v.shape[-1] < 2:
        return None
    if picks == 'best':
        return v[..., -1] - v[..., -2] if func in (aten.max.dim, aten.argmax.default) else v[..., 1] - v[..., 0]
    k = args[1]
    if k >= v.shape[-1]:
        return None
    largest = args[3] if len(args) > 3 else kwargs.get('largest', True)
    n = v.shape[-1]
    return v[..., n - k] - v[..., n - k - 1] if largest else v[..., k] - v[..., k - 1]


class _Margins(TorchDispatchMode):
    """Per image, the smallest gap between a chosen and an unchosen value of any selection in the
    forward, in units of the rounding tolerance of the values compared. A sort decides something
    only where its order is cut (``order[:, :k]``): then the values on both sides of the cut count."""

    def __init__(self, batch: int, depth: int) -> None:
        super().__init__()
        self.batch, self.depth = batch, depth
        self.margin = torch.full((batch,), float('inf'), dtype=torch.float64)
        self.sorted = {}  # id of a sort's index output -> (that tensor, the input, its sorted values, dim)

    def _record(self, x: torch.Tensor, gaps: torch.Tensor) -> None:
        size = x.detach().abs().nan_to_num(posinf=0.0)  # the computed values set the rounding scale:
        size = size.masked_fill(size > SENTINEL, 0.0)  # not inf, nor the huge leads that rank tokens first
        scale = EPS * self.depth * size.flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny).double()
        gaps = gaps.double().nan_to_num(nan=float('inf'))  # two -inf (masked) entries: no decision between them
        per_row = gaps.reshape(x.shape[0], -1).amin(1) / scale  # [rows]
        if x.shape[0] == self.batch:
            self.margin = torch.minimum(self.margin, per_row)
        else:  # not laid out per image: the smallest gap counts for every image
            self.margin = torch.minimum(self.margin, per_row.min().expand(self.batch))

    def _cut(self, indices: torch.Tensor, args, kwargs) -> None:
        """``indices[..., start:end]`` of a sort's index output along its sorted dim: records the
        gaps at the cut(s)."""
        _, x, v, dim = self.sorted[id(indices)]
        cut_dim = (args[1] if len(args) > 1 else kwargs.get('dim', 0)) % indices.ndim
        if cut_dim != dim:
            return
        n = v.shape[-1]
        for cut in (args[2] if len(args) > 2 else kwargs.get('start'), args[3] if len(args) > 3 else kwargs.get('end')):
            if cut is not None and 0 < cut < n:
                self._record(x, (v[..., cut - 1] - v[..., cut]).abs())

    def _scattered(self, indices: torch.Tensor) -> None:
        """A sort's whole order is scattered back (each sorted position decides something about the
        element now there): records the gaps between neighbours in that order (equal masked -inf
        values decide nothing)."""
        _, x, v, _ = self.sorted[id(indices)]
        if v.shape[-1] > 1:
            self._record(x, (v[..., 1:] - v[..., :-1]).abs())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.numel():
            return out
        with torch.no_grad():
            if func is aten.slice.Tensor and id(x) in self.sorted:
                self._cut(x, args, kwargs)
            elif func in _SCATTERS and len(args) > 2 and id(args[2]) in self.sorted:
                self._scattered(args[2])
            elif not x.is_floating_point():
                pass
            elif func in _SELECTIONS:
                gaps = _selection_gaps(func, args, kwargs)
                if gaps is not None:
                    self._record(x, gaps)
                elif _SELECTIONS[func][2] == 'order':
                    dim = (args[1] if func is aten.sort.default and len(args) > 1 else kwargs.get('dim', -1)) % x.ndim
                    if dim:  # not across the images
                        self.sorted[id(out[1])] = (out[1], x, out[0].movedim(dim, -1), dim)
            elif func in _COMPARISONS and len(args) > 1 and isinstance(args[1], (int, float)):
                self._record(x, (x.detach() - args[1]).abs())
        return out


@torch.no_grad()
def decision_margins(model: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """``[B]`` how far each image's closest selection in ``model(x, **kwargs)`` was from a tie, in
    units of the rounding tolerance of the values compared: below 1, rounding alone could flip it."""
    mode = _Margins(x.shape[0], matmul_depth(model))
    with mode:
        model(x, **kwargs)
    return mode.margin


def assert_matches(model: nn.Module, x: torch.Tensor, out: torch.Tensor, recorded: torch.Tensor, what: str,
                   discrete: Sequence = (), **kwargs) -> torch.Tensor:
    """Asserts that ``out`` (``model(x, **kwargs)``, ``[B, ...]``) equals ``recorded`` within
    ``rounding_tolerance``, and each ``(ours, recorded)`` pair of ``discrete`` (``[B, ...]``
    decisions, counts) exactly, for every image whose decisions did not sit within rounding of a
    tie (``decision_margins``); those are left out with a ``NearTieWarning`` naming them.

    Returns:
        ``[B]`` bool: the images compared.
    """
    tol = rounding_tolerance(model, recorded)
    diff = (out.detach().float() - recorded.float()).abs().flatten(1).amax(1)  # [B]
    off = diff > tol
    which = [(torch.as_tensor(ours) != torch.as_tensor(theirs)).reshape(len(off), -1).any(1)
             for ours, theirs in discrete]  # per discrete output, [B]
    for changed in which:
        off |= changed
    compared = torch.ones_like(off)
    if off.any():
        idx = off.nonzero()[:, 0]
        near = decision_margins(model, x[idx], **kwargs) < 1.0
        worst = diff[idx]
        unexplained = idx[~near].tolist()
        outputs = [i for i, changed in enumerate(which) if changed[idx[~near]].any()]
        assert not unexplained, (f'{what}: images {unexplained} differ from the recording (outputs by up to '
                                 f'{worst[~near].max():.3g}, rounding explains {tol:.3g}; discrete outputs {outputs} '
                                 f'differ) with no decision near a tie')
        compared[idx] = False
        warnings.warn(NearTieWarning(f'{what}: images {idx.tolist()} not compared: a decision sat within rounding '
                                     f'of its threshold (they differ by up to {worst.max():.3g})'))
    return compared


def gradient_tolerance(model: nn.Module, reference: torch.Tensor) -> float:
    """``rounding_tolerance`` for gradients like ``reference``: the backward pass runs each product
    twice more (for the input and the weight), so twice the depth."""
    return rounding_tolerance(model, reference, 2 * matmul_depth(model))


def assert_rounding_close(model: nn.Module, actual: torch.Tensor, expected: torch.Tensor, msg=None) -> None:
    """``actual`` equals ``expected`` up to ``rounding_tolerance(model, expected)``: the same network
    computed in another order (see the module docstring)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=rounding_tolerance(model, expected), msg=msg)
