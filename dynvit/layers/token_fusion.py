"""EViT's token reorganisation, as operations on timm blocks.

Paper: Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations (Liang, Ge, Tong, Song, Wang, Xie; ICLR 2022), arXiv:2202.07800.

Inside a block, after the attention residual and before the MLP, the non-prefix tokens are
ranked by the attention the class token paid them in that block (mean over heads); the top
``k`` stay, in descending attention order, and the others ("inattentive") are fused into one
token, their sum weighted by that attention (not renormalised), appended last. The MLP and
the later blocks run on the shorter sequence.
"""
from typing import Tuple

import torch
from timm.models.vision_transformer import Block

from .attention import attention_with_class_row
from .token_ops import attention_residual, gather_tokens, mlp_residual


def keep_attentive(
        x: torch.Tensor,
        score: torch.Tensor,
        num_prefix: int,
        num_keep: int,
        fuse: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keeps the ``num_keep`` most attentive non-prefix tokens and fuses (or drops) the rest.

    Fusing ranks all n tokens (one sort, one gather): the first k of that order are kept, the
    others are summed with their scores as weights in one ``[1, n - k] @ [n - k, C]`` product per
    image, so no mask of the kept tokens is built.

    Args:
        x: Tokens ``[B, P + n, C]``, prefix (class, register) tokens first.
        score: ``[B, n]`` class attention of the non-prefix tokens (may carry gradient: it
            weighs the fused token).
        num_prefix: P (always kept).
        num_keep: k, at most n.
        fuse: Append the fused token of the others (else they are dropped).

    Returns:
        ``[B, P + k (+ 1), C]``: prefix tokens, the kept tokens in descending score order, the
        fused token ``sum_j score[j] * x[j]`` over the others; and the kept tokens' indices
        ``[B, k]`` into the n non-prefix tokens.
    """
    patches = x[:, num_prefix:]
    if not fuse:
        keep = score.topk(num_keep, dim=1, sorted=True).indices  # [B, k]
        return torch.cat([x[:, :num_prefix], gather_tokens(patches, keep)], dim=1), keep
    ranked, order = score.sort(dim=1, descending=True)  # [B, n]
    ordered = gather_tokens(patches, order)  # [B, n, C]
    fused = ranked[:, None, num_keep:].to(x.dtype) @ ordered[:, num_keep:]  # [B, 1, n - k] @ [B, n - k, C]
    return torch.cat([x[:, :num_prefix], ordered[:, :num_keep], fused], dim=1), order[:, :num_keep]


def block_forward_keep_attentive(
        block: Block,
        x: torch.Tensor,
        num_prefix: int,
        num_keep: int,
        fuse: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs a timm ``Block`` that reorganises its tokens between attention and MLP.

    The attention stays fused (SDPA); only the class token's attention row is computed apart
    (``attention.attention_with_class_row``), with gradient: it weighs the fused token.

    Args:
        block: A timm ``Block`` (see ``token_ops.is_packable``).
        x: Tokens ``[B, P + n, C]``, the class token first.
        num_prefix: P.
        num_keep: Non-prefix tokens kept, k < n.
        fuse: Fuse the others into one token (else drop them).

    Returns:
        The block output ``[B, P + k (+ 1), C]``, the kept indices ``[B, k]`` (into the n input
        non-prefix tokens, descending score) and the scores ``[B, n]`` (float32).
    """
    rows = []

    def attention(attn, y):
        out, row = attention_with_class_row(attn, y, keep_grad=fuse)
        rows.append(row)
        return out

    x = attention_residual(block, x, attention)
    score = rows[0][:, num_prefix:]  # softmax over all keys, prefix columns left out (not renormalised)
    x, keep = keep_attentive(x, score, num_prefix, num_keep, fuse)
    return mlp_residual(block, x), keep, score
