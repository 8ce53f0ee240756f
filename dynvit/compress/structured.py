"""Structured pruning: whole attention heads, MLP hidden units or residual-block channels are cut
out of the tensors, so the model is smaller and computes less (its MAC counts follow the new
shapes). Ranked by weight magnitude (Han et al. 2015, arXiv:1506.02626, applied per structure)."""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import Attention, Mlp
from timm.models.resnet import BasicBlock

from ..layers import drop_weight_caches, is_timm_attention
from ._masks import _pruning_hooks

__all__ = [
    'attention_blocks', 'basic_blocks', 'head_scores', 'mlp_unit_scores', 'channel_scores', 'shrink_attention',
    'shrink_mlp', 'shrink_basic_block', 'prune_attention_heads', 'prune_mlp_units', 'prune_block_channels',
]

KeepIndices = Sequence[Optional[Sequence[int]]]


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
    drop_weight_caches(conv)


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
        raise ValueError(f'{where}: channel pruning supports timm BasicBlock (and blocks built on it), got '
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
    channels. A block with modules of its own on those channels (channel gates) shrinks them in
    its ``keep_hidden_channels(keep)``. The block output (``conv2``'s channels, added to the
    shortcut) is unchanged.

    Returns:
        ``block``.
    """
    _check_basic_block(block)
    _check_unmasked(block)
    idx = _as_index(keep, block.conv1.out_channels, 'shrink_basic_block')
    _slice_conv(block.conv1, out_idx=idx)
    _slice_batch_norm(block.bn1, idx)
    _slice_conv(block.conv2, in_idx=idx)
    if hasattr(block, 'keep_hidden_channels'):
        block.keep_hidden_channels(idx)
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
    """The ResNet basic blocks (subclasses included), in model order."""
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError(f'{type(model).__name__} has no ResNet BasicBlock; channel pruning supports basic-block '
                         f'ResNets (timm resnet18/34 and the models built on them)')
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

    Works on timm ``VisionTransformer`` blocks and the token families' (theirs are timm's); the
    attention code of all of them reads ``num_heads`` / ``head_dim`` from the module. At least one head stays in
    every block. Create the optimizer afterwards: the pruned layers get new parameters.

    Note: a family that ranks tokens by the class attention averaged over heads ranks them
    differently after, while zeroing a head's weights would leave it voting with a uniform row.

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
    (``channel_scores``) from every basic block of a ResNet (timm's or one built on it).

    A block's own modules on those channels (channel gates) shrink with them (see
    ``shrink_basic_block``); a gate then keeps its density of the remaining channels. The block outputs, which
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
