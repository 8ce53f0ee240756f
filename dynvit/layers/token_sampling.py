"""ATS's adaptive token sampling, as operations on timm blocks.

Paper: Adaptive Token Sampling For Efficient Vision Transformers (Fayyaz, Koohpayegani, Jafari,
Sengupta, Joze, Sommerlade, Pirsiavash, Gall; ECCV 2022), arXiv:2111.15667.

Inside a block, once its queries, keys and values exist: each patch token's significance is the
attention the class token pays it (summed over heads) times the L2 norm of its value (all heads),
normalised over the patches. Sorted ascending, their cumulative sum, min-max normalised, is a cdf
over [0, 1]; ``S`` evenly spaced points from its smallest positive value to 1 each pick the token
whose cdf value is nearest (inverse transform sampling), and the distinct picks are kept, so an
image whose significance is concentrated keeps fewer tokens. The block then computes the
attention rows, the output projection and the MLP of the kept tokens only (over all keys), so a
kept token's output is what the dense block would give it, and the next blocks see the kept ones.

Images keep different counts, so from the first sampling block on a batch runs packed: the tokens
of all images in one ``[1, T, C]`` sequence (``token_ops``), the token-wise layers once over all
of them, the attention per image.
"""
from typing import List, Sequence, Tuple

import torch
from einops import rearrange
from timm.models.vision_transformer import Block

from .attention import attend, merge_heads
from .token_ops import mlp_residual, packed_drop_path

__all__ = ['packed_padding', 'sample_points', 'sample_tokens', 'sampling_block_forward']


def sample_points(start: torch.Tensor, num_points: int) -> torch.Tensor:
    """``[B, S]`` evenly spaced points from ``start`` ``[B]`` to 1, written as the released code
    computes them (so the points round the same way).

    Args:
        start: The smallest positive value of each image's normalised cdf.
        num_points: S (1: the single point 1.0, the most significant token).
    """
    if num_points == 1:
        return torch.ones_like(start)[:, None]
    steps = torch.arange(num_points, device=start.device, dtype=start.dtype)  # [S]
    unit = torch.linspace(0.0, 1.0, num_points, device=start.device, dtype=start.dtype)
    span = num_points - 1
    return start[:, None] + (unit * span - start[:, None] * steps) / span


def sample_tokens(scores: torch.Tensor, valid: torch.Tensor, num_points: int) -> torch.Tensor:
    """Inverse transform sampling of the tokens to keep, per image.

    Args:
        scores: ``[B, n]`` significance (>= 0) of each image's tokens; any value where not ``valid``.
        valid: ``[B, n]`` bool, the image's tokens (padding is False).
        num_points: S, the points sampled per image.

    Returns:
        ``[B, n]`` bool: the tokens picked by at least one point (at most S per image, at least one).
    """
    B, n = scores.shape
    scores = scores.float().masked_fill(~valid, 0.0)
    weights = scores / scores.sum(dim=1, keepdim=True)  # normalised before sorting, as released
    ranked, order = weights.masked_fill(~valid, float('-inf')).sort(dim=1)  # ascending, padding first
    cdf = ranked.clamp_min(0.0).cumsum(dim=1)  # [B, n]: the padding adds nothing
    first = (n - valid.sum(dim=1, keepdim=True)).clamp_max(n - 1)  # the least significant real token
    low, high = cdf.gather(1, first), cdf[:, -1:]
    real = torch.arange(n, device=scores.device)[None, :] >= first  # [B, n], in sorted order
    ncdf = torch.where(high > low, (cdf - low) / (high - low), torch.ones_like(cdf))  # one token: 1
    ncdf = ncdf.masked_fill(~real, float('-inf'))  # stays sorted ascending
    start = ncdf.masked_fill(~real | (ncdf == 0), 1e8).amin(dim=1)  # the smallest positive value
    start = torch.where(start > 1.0, torch.ones_like(start), start)  # all zero (equal scores): 1
    y = sample_points(start, num_points)  # [B, S]
    right = torch.searchsorted(ncdf, y).clamp(max=n - 1)  # first cdf value >= y
    left = torch.maximum(right - 1, first)
    neighbours = torch.stack([left, right], dim=2)  # [B, S, 2]
    dist = (y[:, :, None] - ncdf.gather(1, neighbours.flatten(1)).view(B, num_points, 2)).abs()
    pick = neighbours.gather(2, dist.argmin(dim=2, keepdim=True))[..., 0]  # the nearer; the lower on a tie
    hit = torch.zeros_like(valid).scatter_(1, pick, True)  # sorted positions picked
    return torch.zeros_like(valid).scatter_(1, order, hit) & valid


def packed_padding(lengths: Sequence[int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where each image's tokens sit in a packed sequence.

    Args:
        lengths: Tokens per image (their sum is T).
        device: Of the result.

    Returns:
        ``index`` ``[B, L_max]`` long, the packed position of token j of image b (0 for padding),
        and ``valid`` ``[B, L_max]`` bool.
    """
    lengths_t = torch.as_tensor(list(lengths), device=device)
    starts = lengths_t.cumsum(0) - lengths_t
    slots = torch.arange(int(lengths_t.max()), device=device)[None, :]
    valid = slots < lengths_t[:, None]
    return torch.where(valid, starts[:, None] + slots, 0), valid


def sampling_block_forward(
        block: Block,
        x: torch.Tensor,
        lengths: Sequence[int],
        num_prefix: int,
        num_points: int,
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Runs a timm ``Block`` that samples the tokens to keep after its keys and values.

    Args:
        block: A timm ``Block`` with timm ``Attention`` (see ``token_ops.is_packable``).
        x: Packed tokens ``[1, T, C]``, image after image, each image's prefix tokens (the class
            token first) before its patches.
        lengths: Tokens per image, summing to T.
        num_prefix: P, the prefix tokens of each image (always kept).
        num_points: S, the points each image samples.

    Returns:
        The packed output ``[1, T', C]`` of the kept tokens (each image's in their input order),
        ``keep`` ``[B, L_max]`` bool over each image's input tokens (prefix included, padding
        False) and the new lengths.
    """
    attn = block.attn
    h = block.norm1(x)
    q, k, v = rearrange(attn.qkv(h), '1 t (three h d) -> three h t d', three=3, h=attn.num_heads).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)  # [H, T, D]
    index, valid = packed_padding(lengths, x.device)  # [B, L]
    starts = index[:, 0]
    # significance: the class token's attention row (its own softmax over the image's keys) x value norms
    k_pad = k[:, index]  # [H, B, L, D]; padding repeats a real key, masked below
    logits = torch.einsum('hbd,hbld->bhl', q[:, starts] * attn.scale, k_pad)  # [B, H, L]
    row = logits.float().masked_fill(~valid[:, None], float('-inf')).softmax(dim=-1).sum(dim=1)  # [B, L]
    value_norm = rearrange(v, 'h t d -> t (h d)').float().norm(dim=-1)[index]  # [B, L]
    patches = valid[:, num_prefix:]
    picked = sample_tokens((row * value_norm)[:, num_prefix:], patches, num_points)  # [B, L - P]
    keep = torch.cat([valid[:, :num_prefix], picked], dim=1)
    kept = index[keep]  # [T'] packed positions of the kept tokens, image after image
    new_lengths = keep.sum(dim=1).tolist()
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    q_kept = q[:, kept]  # per image below: measured faster than one call padded to the longest image
    o = torch.cat([attend(qi[None], ki[None], vi[None], None, attn.fused_attn, attn.scale, dropout_p)[0]
                   for qi, ki, vi in zip(q_kept.split(new_lengths, dim=1), k.split(list(lengths), dim=1),
                                         v.split(list(lengths), dim=1))], dim=1)  # [H, T', D]
    gate = attn.gate(h[:, kept]).sigmoid() if getattr(attn, 'gate', None) is not None else None
    x = x[:, kept] + packed_drop_path(block.drop_path1, block.ls1(merge_heads(attn, o[None], gate)), new_lengths)
    return mlp_residual(block, x, new_lengths), keep, new_lengths
