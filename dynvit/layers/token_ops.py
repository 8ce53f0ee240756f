"""Token operations shared by the token-dropping models: gather, attention masks, packing.

Three ways to run a transformer block on a subset of tokens:

* masked: all tokens stay in the tensor, an additive SDPA mask hides dropped keys (training,
  see ``attention.policy_attention``);
* gathered: every image keeps the same number k of tokens, ``[B, k, C]`` (top-k inference);
* packed: images keep different numbers of tokens, concatenated into one ``[1, T, C]``
  sequence; token-wise layers (norms, qkv, MLP) run once over all T tokens and attention
  runs per image (threshold inference).
"""
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import Attention
from timm.models.vision_transformer import Block

from .attention import PolicyAttention, attend, merge_heads, split_qkv


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Selects tokens per image: ``x[b, index[b]]``.

    Args:
        x: Tokens ``[B, N, C]``.
        index: Token indices ``[B, k]``.

    Returns:
        ``[B, k, C]``.
    """
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def is_packable(block: nn.Module) -> bool:
    """Whether ``packed_block_forward`` reproduces ``block.forward`` (timm's pre-norm ``Block``)."""
    return isinstance(block, Block) and type(block).forward is Block.forward


def is_timm_attention(attn: nn.Module) -> bool:
    """Whether ``attn`` computes timm's own ``Attention`` forward (so its q/k/v may be used directly)."""
    return type(attn).forward in (Attention.forward, PolicyAttention.forward)


def packed_attention(attn: Attention, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Self-attention within each image of a packed sequence.

    For timm's own ``Attention`` the qkv and output projections run once over all packed
    tokens and only the attention products run per image; other attention modules are
    called once per image.

    Args:
        attn: The block's attention module.
        x: Packed (normalised) tokens ``[1, T, C]``.
        lengths: Tokens per image, summing to T.

    Returns:
        ``[1, T, C]``.
    """
    lengths = list(lengths)
    if not is_timm_attention(attn):
        return torch.cat([attn(seg) for seg in x.split(lengths, dim=1)], dim=1)
    q, k, v, gate = split_qkv(attn, x)  # [1, H, T, D] each
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    out = [attend(qi, ki, vi, None, attn.fused_attn, attn.scale, dropout_p)
           for qi, ki, vi in zip(q.split(lengths, dim=2), k.split(lengths, dim=2), v.split(lengths, dim=2))]
    return merge_heads(attn, torch.cat(out, dim=2), gate)


def packed_drop_path(drop_path: nn.Module, y: torch.Tensor, lengths: Optional[Sequence[int]]) -> torch.Tensor:
    """timm's ``DropPath`` (stochastic depth) per image of a packed sequence: one draw per image,
    where the module itself would see one sample and drop the whole batch's branch at once.

    Args:
        drop_path: A block's ``drop_path1`` / ``drop_path2`` (``DropPath`` or ``Identity``).
        y: The branch output ``[1, T, C]`` (``[B, L, C]`` when ``lengths`` is None).
        lengths: Tokens per image of a packed ``y``; None: not packed.
    """
    p = float(getattr(drop_path, 'drop_prob', 0.0))
    if lengths is None or not drop_path.training or p == 0.0:
        return drop_path(y)
    keep = 1.0 - p
    mask = y.new_empty(len(lengths)).bernoulli_(keep)  # [B]
    if keep > 0.0 and getattr(drop_path, 'scale_by_keep', True):
        mask.div_(keep)
    return y * mask.repeat_interleave(torch.as_tensor(list(lengths), device=y.device))[None, :, None]


def packed_block_forward(block: Block, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Runs a timm ``Block`` on several images packed into one sequence.

    Norms, LayerScale, the MLP and the attention projections run once on all packed
    tokens; only the attention products run per image (``packed_attention``).

    Args:
        block: A timm ``Block`` (see ``is_packable``).
        x: Packed tokens ``[1, T, C]``, image after image.
        lengths: Tokens per image, summing to T.

    Returns:
        ``[1, T, C]``.
    """
    return residual_block_forward(block, x, lambda attn, y: packed_attention(attn, y, lengths), lengths)


def residual_block_forward(
        block: Block,
        x: torch.Tensor,
        attention: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        lengths: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """timm's pre-norm ``Block.forward`` with the attention call replaced.

    Args:
        block: A timm ``Block`` (see ``is_packable``).
        x: Tokens ``[B, L, C]`` (or packed ``[1, T, C]`` with ``lengths``).
        attention: ``attention(block.attn, norm1(x))`` returns the attention branch ``[B, L, C]``.
        lengths: Tokens per image of a packed ``x`` (drop path per image); None: not packed.

    Returns:
        ``[B, L, C]``.
    """
    return mlp_residual(block, attention_residual(block, x, attention, lengths), lengths)


def attention_residual(
        block: Block,
        x: torch.Tensor,
        attention: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        lengths: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """The first half of timm's ``Block.forward``: ``x + attention(block.attn, norm1(x))`` (with
    LayerScale and drop path, per image of a packed ``x`` with ``lengths``), ``[B, L, C]``."""
    return x + packed_drop_path(block.drop_path1, block.ls1(attention(block.attn, block.norm1(x))), lengths)


def mlp_residual(block: Block, x: torch.Tensor, lengths: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The second half of timm's ``Block.forward``: ``x + mlp(norm2(x))`` (with LayerScale and drop
    path, per image of a packed ``x`` with ``lengths``), ``[B, L, C]``; L may differ from the first
    half's (tokens dropped in between)."""
    return x + packed_drop_path(block.drop_path2, block.ls2(block.mlp(block.norm2(x))), lengths)


def unpack_tokens(x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turns packed tokens into a zero-padded batch.

    Args:
        x: Packed tokens ``[1, T, C]``.
        lengths: Tokens per image.

    Returns:
        Padded tokens ``[B, L_max, C]`` and the validity mask ``[B, L_max]`` (bool).
    """
    lengths_t = torch.as_tensor(list(lengths), device=x.device)
    valid = torch.arange(int(lengths_t.max()), device=x.device)[None, :] < lengths_t[:, None]
    out = x.new_zeros(*valid.shape, x.shape[-1])
    out[valid] = x[0]
    return out, valid
