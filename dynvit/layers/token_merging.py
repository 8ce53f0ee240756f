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
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .attention import attend, merge_heads, split_qkv
from .weight_reads import tracing

__all__ = ['TokenMatch', 'bipartite_soft_matching', 'max_merge', 'merge_positions', 'merge_tokens',
           'merging_block_forward', 'size_bias']


@dataclass
class TokenMatch:
    """One block's bipartite matching of ``num_tokens`` tokens (A: even positions, B: odd).

    Attributes:
        unmerged: ``[B, |A| - r]`` A indices (into A) of the A tokens that stay; ascending when
            there are protected tokens, else in descending similarity (as the released code orders them).
        src: ``[B, r]`` A indices of the tokens merged away, most similar first.
        best_dst: ``[B, |A|]`` B index (into B) of each A token's most similar B token.
        num_tokens: Tokens before the merge.
        num_protected: Leading tokens never merged.
    """
    unmerged: torch.Tensor
    src: torch.Tensor
    best_dst: torch.Tensor
    num_tokens: int
    num_protected: int

    @property
    def dst(self) -> torch.Tensor:
        """``[B, r]`` B indices (into B) of the token each merged-away token joins."""
        return self.best_dst.gather(1, self.src)

    @property
    def dst_positions(self) -> torch.Tensor:
        """``[B, r]`` position after the merge of the token each merged-away token joins."""
        return self.unmerged.shape[1] + self.dst

    @property
    def order(self) -> torch.Tensor:
        """``[B, num_tokens - r]`` previous position of each token after the merge: protected tokens,
        staying A tokens, all B tokens."""
        P, T = self.num_protected, self.num_tokens
        B, device = self.unmerged.shape[0], self.unmerged.device
        prefix = torch.arange(P, device=device).expand(B, -1)
        stay_a = 2 * self.unmerged[:, (P + 1) // 2:]
        all_b = torch.arange(2 * (P // 2) + 1, T, 2, device=device).expand(B, -1)
        return torch.cat([prefix, stay_a, all_b], dim=1)


def max_merge(num_tokens: int, num_protected: int) -> int:
    """The most tokens one block can merge away: half of the unprotected ones (rounded down)."""
    return max(0, (num_tokens - num_protected) // 2)


def _constant(owner: Any, name: str, key: Tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor that depends only on shapes (``key``), made once per key and kept on ``owner``
    (made afresh while a compiler traces: it folds constants itself)."""
    if tracing():
        return make()
    cache = owner if isinstance(owner, dict) else owner.__dict__.setdefault('_merge_constants', {})
    if (name, key) not in cache:
        cache[name, key] = make()
    return cache[name, key]


@torch.no_grad()
def bipartite_soft_matching(metric: torch.Tensor, r: int, num_protected: int, owner: Any = None) -> TokenMatch:
    """Matches ``r`` A tokens to their most similar B tokens.

    Args:
        metric: ``[B, T, D]`` what similarity is measured on (ToMe: the keys averaged over heads).
        r: Tokens to merge away, ``0 < r <= max_merge(T, num_protected)``.
        num_protected: Leading tokens that are never merged (class and register tokens).
        owner: Where the shape-only constants are kept between calls (e.g. the block); None: made each call.

    Returns:
        The matching (no gradient: the choice is discrete).
    """
    B, T, _ = metric.shape
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    na, nb = a.shape[1], b.shape[1]
    if num_protected:  # protected A tokens are never merged away, protected B tokens receive nothing
        def make_mask() -> torch.Tensor:
            mask = torch.zeros(1, na, nb, dtype=metric.dtype, device=metric.device)
            mask[:, :(num_protected + 1) // 2] = -math.inf
            mask[:, :, :num_protected // 2] = -math.inf
            return mask
        mask = _constant(owner if owner is not None else {}, 'mask', (na, nb, num_protected, metric.dtype, metric.device), make_mask)
        scores = torch.baddbmm(mask, a, b.transpose(-1, -2))  # [B, |A|, |B|] cosine similarity, masked
    else:
        scores = a @ b.transpose(-1, -2)
    best, best_dst = scores.max(dim=-1)  # [B, |A|]
    ranked = best.argsort(dim=-1, descending=True)
    unmerged, src = ranked[:, r:], ranked[:, :r]
    if num_protected:
        unmerged = unmerged.sort(dim=1).values  # protected tokens first, the rest in their order
    return TokenMatch(unmerged, src, best_dst, T, num_protected)


def _new_positions(match: TokenMatch, owner: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each token goes in the merge: ``[B, |A|]`` for the A tokens (a merged one: the position
    of the B token it joins) and ``[|B|]`` for the B tokens (the same for every image)."""
    P, T = match.num_protected, match.num_tokens
    na, nb = (T + 1) // 2, T // 2
    kept = match.unmerged.shape[1]  # |A| - r
    device = match.src.device

    def unmerged_targets() -> torch.Tensor:  # the position of the q-th unmerged A token
        q = torch.arange(kept, device=device)
        pa = (P + 1) // 2  # protected A tokens stay where they were (positions 0, 2, ...)
        return torch.where(q < pa, 2 * q, P + q - pa) if P else q

    def b_positions() -> torch.Tensor:  # protected B tokens stay (positions 1, 3, ...), the others follow the A tokens
        m = torch.arange(nb, device=device)
        return torch.where(m < P // 2, 2 * m + 1, kept + m)

    key = (na, nb, kept, P, device)
    targets = _constant(owner, 'unmerged', key, unmerged_targets).expand(match.unmerged.shape[0], -1)
    pos_a = (match.best_dst + kept).scatter_(1, match.unmerged, targets)
    return pos_a, _constant(owner, 'b', key, b_positions)


def merge_tokens(x: torch.Tensor, size: Optional[torch.Tensor], match: TokenMatch,
                 owner: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: ``x_dst = sum(size * x) / sum(size)`` over each B token and
    the A tokens that join it, in a few kernels: the tokens carry their size as one more channel,
    every A token is added into its new position at once (a merged-away one into its B token's),
    the B tokens are laid down in theirs.

    Args:
        x: Tokens ``[B, T, C]``.
        size: ``[B, T, 1]`` original tokens each token holds (None: all 1).
        match: The block's matching.
        owner: Where the shape-only constants are kept between calls (e.g. the block).

    Returns:
        The merged tokens ``[B, T - r, C]`` and their sizes ``[B, T - r, 1]``.
    """
    B, T, C = x.shape
    pos_a, pos_b = _new_positions(match, owner if owner is not None else {})
    # [B, T, C + 1]: size * x and size
    xs = F.pad(x, (0, 1), value=1.0) if size is None else torch.cat([x * size, size], dim=-1)
    kept = match.unmerged.shape[1]
    if match.num_protected // 2 == 0:  # no protected B token: the B tokens are the last ones, in order
        out = F.pad(xs[:, 1::2], (0, 0, kept, 0))  # [B, T - r, C + 1], B tokens in place, zeros before
    else:
        out = xs.new_zeros(B, T - match.src.shape[1], C + 1).index_copy_(1, pos_b, xs[:, 1::2])
    out = out.scatter_add(1, pos_a.unsqueeze(-1).expand(-1, -1, C + 1), xs[:, ::2])
    new_size = out[..., C:]
    return out[..., :C] / new_size, new_size


def merge_positions(match: TokenMatch) -> torch.Tensor:
    """``[B, T]`` position after the merge of each token before it (a merged-away token: the one it joined)."""
    B, kept = match.order.shape
    new = torch.empty(B, match.num_tokens, dtype=torch.long, device=match.src.device)
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
    match = bipartite_soft_matching(keys[0].mean(dim=1), r, num_protected, block)  # keys averaged over heads
    x, size = merge_tokens(x, size, match, block)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size, match
