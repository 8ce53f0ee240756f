"""Token merging (ToMe) as operations on timm blocks.

Paper: Token Merging: Your ViT But Faster (Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman;
ICLR 2023), arXiv:2210.09461.

Inside a block, after the attention residual and before the MLP, the current tokens are split
by position into A (even positions) and B (odd positions). Each A token finds its most similar
B token (cosine similarity of the block's attention keys averaged over heads); the ``r`` A
tokens with the most similar partners are merged into them, a size-weighted average, so the
MLP and every later block compute ``r`` fewer tokens. ``size`` counts the original tokens a
token holds; with proportional attention ``log(size)`` of each key is added to the attention
logits, so a merged token weighs as much as the tokens it stands for.

The leading ``num_protected`` tokens (the class token; registers where the model protects
them) generalise the released code's class and distillation tokens: one in A is never merged
away, one in B never receives a merge, and they stay first, in their order. After a merge the
order is the released code's: protected tokens, the A tokens that stayed (in their order), then
every B token (in its order); the next block splits this order into A and B again.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from timm.models.vision_transformer import Block

from .attention import attend, merge_heads, split_qkv
from .token_ops import gather_tokens

__all__ = ['TokenMatch', 'bipartite_soft_matching', 'max_merge', 'merge_positions', 'merge_tokens',
           'merging_block_forward', 'size_bias']


@dataclass
class TokenMatch:
    """One block's bipartite matching of ``num_tokens`` tokens (A: even positions, B: odd).

    Attributes:
        unmerged: ``[B, |A| - r]`` A indices (into A) of the A tokens that stay; ascending when
            there are prefix tokens, else in descending similarity (as the released code orders them).
        src: ``[B, r]`` A indices of the tokens merged away, most similar first.
        dst: ``[B, r]`` B indices (into B) of the token each of them joins.
        order: ``[B, num_tokens - r]`` previous position of each token after the merge.
        num_tokens: Tokens before the merge.
    """
    unmerged: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    order: torch.Tensor
    num_tokens: int

    @property
    def dst_positions(self) -> torch.Tensor:
        """``[B, r]`` position after the merge of the token each merged-away token joins."""
        return self.unmerged.shape[1] + self.dst


def max_merge(num_tokens: int, num_protected: int) -> int:
    """The most tokens one block can merge away: half of the unprotected ones (rounded down)."""
    return max(0, (num_tokens - num_protected) // 2)


@torch.no_grad()
def bipartite_soft_matching(metric: torch.Tensor, r: int, num_protected: int) -> TokenMatch:
    """Matches ``r`` A tokens to their most similar B tokens.

    Args:
        metric: ``[B, T, D]`` what similarity is measured on (ToMe: the keys averaged over heads).
        r: Tokens to merge away, ``0 < r <= max_merge(T, num_protected)``.
        num_protected: Leading tokens that are never merged (class and register tokens).

    Returns:
        The matching (no gradient: the choice is discrete).
    """
    B, T, _ = metric.shape
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [B, |A|, |B|] cosine similarity
    if num_protected:
        scores[:, :(num_protected + 1) // 2] = -math.inf  # protected A tokens are never merged away
        scores[:, :, :num_protected // 2] = -math.inf  # protected B tokens receive nothing
    best, best_dst = scores.max(dim=-1)  # [B, |A|]
    ranked = best.argsort(dim=-1, descending=True)
    unmerged, src = ranked[:, r:], ranked[:, :r]
    dst = best_dst.gather(1, src)
    if num_protected:
        unmerged = unmerged.sort(dim=1).values  # protected tokens first, the rest in their order
    return TokenMatch(unmerged, src, dst, _merge_order(unmerged, num_protected, T), T)


def _merge_order(unmerged: torch.Tensor, num_protected: int, num_tokens: int) -> torch.Tensor:
    """``[B, T - r]`` previous positions in the order after the merge: prefix, staying A tokens, all B tokens."""
    B = unmerged.shape[0]
    prefix = torch.arange(num_protected, device=unmerged.device).expand(B, -1)
    stay_a = 2 * unmerged[:, (num_protected + 1) // 2:]
    all_b = torch.arange(2 * (num_protected // 2) + 1, num_tokens, 2, device=unmerged.device).expand(B, -1)
    return torch.cat([prefix, stay_a, all_b], dim=1)


def merge_tokens(x: torch.Tensor, size: Optional[torch.Tensor], match: TokenMatch) -> Tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: ``x_dst = sum(size * x) / sum(size)`` over each B token and
    the A tokens that join it.

    Args:
        x: Tokens ``[B, T, C]``.
        size: ``[B, T, 1]`` original tokens each token holds (None: all 1).
        match: The block's matching.

    Returns:
        The merged tokens ``[B, T - r, C]`` and their sizes ``[B, T - r, 1]``.
    """
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    src, dst = 2 * match.src, match.dst_positions  # [B, r] positions before / after
    weighted = x * size
    out = gather_tokens(weighted, match.order).scatter_add(
        1, dst.unsqueeze(-1).expand(-1, -1, x.shape[-1]), gather_tokens(weighted, src))
    new_size = gather_tokens(size, match.order).scatter_add(1, dst.unsqueeze(-1), gather_tokens(size, src))
    return out / new_size, new_size


def merge_positions(match: TokenMatch) -> torch.Tensor:
    """``[B, T]`` position after the merge of each token before it (a merged-away token: the one it joined)."""
    B, kept = match.order.shape
    new = torch.empty(B, match.num_tokens, dtype=torch.long, device=match.order.device)
    new.scatter_(1, match.order, torch.arange(kept, device=new.device).expand(B, -1))
    return new.scatter_(1, 2 * match.src, match.dst_positions)


def size_bias(size: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Proportional attention's additive mask ``[B, 1, 1, T]``: ``log(size)`` of each key (None before any merge)."""
    return None if size is None else size.log().to(dtype).view(size.shape[0], 1, 1, -1)


def merging_block_forward(
        block: Block,
        x: torch.Tensor,
        size: Optional[torch.Tensor],
        r: int,
        num_protected: int,
        prop_attn: bool,
) -> Tuple[torch.Tensor, torch.Tensor, TokenMatch]:
    """timm's pre-norm ``Block.forward`` with ToMe between the attention and the MLP.

    The attention stays fused (SDPA), proportional attention entering as its additive mask.

    Args:
        block: A timm ``Block`` with timm ``Attention`` (see ``token_ops.is_packable``).
        x: Tokens ``[B, T, C]``, prefix tokens first.
        size: ``[B, T, 1]`` original tokens each token holds (None before the first merge).
        r: Tokens to merge away, ``0 < r <= max_merge(T, num_protected)``.
        num_protected: Prefix tokens (never merged).
        prop_attn: Add ``log(size)`` of the keys to the attention logits.

    Returns:
        The block output ``[B, T - r, C]``, the sizes ``[B, T - r, 1]`` and the matching.
    """
    keys = []

    def attention(attn, y):
        q, k, v, gate = split_qkv(attn, y)  # [B, H, T, D]
        keys.append(k)
        mask = size_bias(size, q.dtype) if prop_attn else None
        dropout_p = attn.attn_drop.p if attn.training else 0.0
        return merge_heads(attn, attend(q, k, v, mask, attn.fused_attn, attn.scale, dropout_p), gate)

    x = x + block.drop_path1(block.ls1(attention(block.attn, block.norm1(x))))
    match = bipartite_soft_matching(keys[0].mean(dim=1), r, num_protected)  # keys averaged over heads [B, T, D]
    x, size = merge_tokens(x, size, match)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size, match
