"""Evo-ViT's slow-fast token evolution, as operations on timm blocks.

Paper: Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer (Xu, Zhang, Zhang,
Wang, Xu, Wei, Zhang, Sun, Ji; AAAI 2022), arXiv:2108.01390.

Importance is the attention the class token pays to each patch. The informative patches run
through the blocks ("slow", full update); the others, the placeholders, are summarised by a
representative token, their importance-weighted mean, which runs through the blocks with the
informative ones; every placeholder then receives the representative token's residual
("fast" update). The released DeiT code has no representative token: placeholders are left
unchanged.

Within a stage (the blocks between two selections) the placeholders' weights do not change
and every placeholder receives the same residual, so the representative token of block i+1
is the representative token that block i returned: a stage runs its blocks on
``[prefix, informative, representative]`` and the placeholders take the summed residual once,
at the end (``merge_slow_fast``). That is exactly the per-block update of the paper.
"""
from typing import Optional, Tuple

import torch
from timm.models.vision_transformer import Block

from .attention import attention_with_class_row
from .token_ops import gather_tokens, residual_block_forward


def block_forward_with_cls_attention(block: Block, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs a timm ``Block`` and also returns the attention of token 0 (the class token).

    The block's attention stays fused (SDPA); only the class token's attention row is
    computed explicitly (``attention.attention_with_class_row``), without a gradient (it is
    used to rank tokens).

    Args:
        block: A timm ``Block`` (see ``token_ops.is_packable``).
        x: Tokens ``[B, L, C]``, the class token first.

    Returns:
        The block output ``[B, L, C]`` and the class token's attention over the L keys,
        averaged over heads, ``[B, L]`` (float32 whatever the block's dtype).
    """
    rows = []

    def attention(attn, y):
        out, row = attention_with_class_row(attn, y)
        rows.append(row)
        return out

    x = residual_block_forward(block, x, attention)
    return x, rows[0]


def representative_token(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of ``tokens`` (the placeholders: the others weigh 0).

    Args:
        tokens: ``[B, M, C]``.
        weights: Non-negative importance ``[B, M]``. Every weight gets the smallest normal float
            added, which changes no weight above 1e-30 and gives an image whose weights are all
            zero the plain mean (no division by zero, no branch).

    Returns:
        ``[B, 1, C]``.
    """
    return _weighted_mean(tokens, weights + torch.finfo(weights.dtype).tiny)


def _weighted_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j tokens_j / sum_j w_j``: ``[B, 1, C]`` (the weights must not all be 0)."""
    w = weights.unsqueeze(1)  # [B, 1, M]
    return (w.to(tokens.dtype) @ tokens) / w.sum(dim=2, keepdim=True).to(tokens.dtype)


def split_slow_fast(
        x: torch.Tensor,
        num_prefix: int,
        informative: torch.Tensor,
        weights: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The tokens a stage computes: prefix tokens, informative patches, representative token.

    Args:
        x: All tokens ``[B, P + N, C]``, prefix tokens first, patches in original positions.
        num_prefix: P (class and register tokens).
        informative: Patch indices given the full update ``[B, k]``; the others are the placeholders.
        weights: Positive importance of every patch ``[B, N]`` (the model's moving average
            starts at the class attention plus the smallest normal float, so it is), or None for
            no representative token (the released DeiT code's behaviour).

    Returns:
        ``[B, P + k (+ 1), C]`` and the representative token ``[B, 1, C]`` (None without one):
        the placeholders' weighted mean, one product over all the patches with the informative
        ones weighing 0 (no gather of the placeholders).
    """
    patches = x[:, num_prefix:]
    parts = [x[:, :num_prefix], gather_tokens(patches, informative)]
    rep = None
    if weights is not None and informative.shape[1] < patches.shape[1]:
        rep = _weighted_mean(patches, weights.scatter(1, informative, 0.0))
        parts.append(rep)
    return torch.cat(parts, dim=1), rep


def merge_slow_fast(
        x: torch.Tensor,
        y: torch.Tensor,
        num_prefix: int,
        informative: torch.Tensor,
        rep: Optional[torch.Tensor],
) -> torch.Tensor:
    """Puts a stage's results back into all tokens.

    Args:
        x: All tokens before the stage ``[B, P + N, C]``.
        y: The stage's output for the tokens ``split_slow_fast`` gave it ``[B, P + k (+ 1), C]``.
        num_prefix: P.
        informative: The informative patch indices ``[B, k]``.
        rep: The representative token that entered the stage, or None.

    Returns:
        ``[B, P + N, C]``: prefix and informative tokens from ``y``; placeholders are their
        input plus the representative token's residual ``y_rep - rep`` (unchanged without one).
    """
    k = informative.shape[1]
    patches = x[:, num_prefix:]
    if rep is not None:
        patches = patches + (y[:, num_prefix + k:] - rep)
    index = informative.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    patches = patches.scatter(1, index, y[:, num_prefix:num_prefix + k])
    return torch.cat([y[:, :num_prefix], patches], dim=1)
