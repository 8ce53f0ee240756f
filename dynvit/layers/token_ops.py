"""Token operations shared by the token-dropping models: gather, attention masks, packing.

Three ways to run a transformer block on a subset of tokens:

* masked: all tokens stay in the tensor, an additive SDPA mask hides dropped keys (training);
* gathered: every image keeps the same number k of tokens, ``[B, k, C]`` (top-k inference);
* packed: images keep different numbers of tokens, concatenated into one ``[1, T, C]``
  sequence; token-wise layers (norms, qkv, MLP) run once over all T tokens and attention
  runs per image (threshold inference).
"""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention
from timm.models.vision_transformer import Block


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Selects tokens per image: ``x[b, index[b]]``.

    Args:
        x: Tokens ``[B, N, C]``.
        index: Token indices ``[B, k]``.

    Returns:
        ``[B, k, C]``.
    """
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def keep_attention_bias(policy: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Additive attention mask that hides dropped tokens as keys.

    Every query may attend to kept keys and to itself (a dropped token still sees itself, so
    no softmax row is empty). Forward values are 0 (visible) and -inf (hidden), so the result
    equals running the block on the kept tokens alone. The gradient w.r.t. ``policy`` equals
    that of ``log(policy)`` on visible entries, which is the gradient of DynamicViT's
    policy-weighted softmax there; hidden entries carry no gradient.

    Args:
        policy: Keep decisions of the patch tokens ``[B, N]`` in {0, 1}, may carry gradient.
        num_prefix_tokens: Number P of class/register tokens in front, always kept.

    Returns:
        Float mask ``[B, 1, P + N, P + N]`` for ``F.scaled_dot_product_attention``.
    """
    B, N = policy.shape
    L = num_prefix_tokens + N
    keep = torch.cat([policy.new_ones(B, num_prefix_tokens), policy], dim=1)[:, None, None, :]  # [B, 1, 1, L]
    eye = torch.eye(L, dtype=policy.dtype, device=policy.device)
    visible = keep + (1.0 - keep) * eye  # [B, 1, L, L]; 1 where the key is kept or is the query itself
    hidden = torch.zeros_like(visible).masked_fill_(visible.detach() < 0.5, float('-inf'))
    return (visible - 1.0) + hidden


def is_packable(block: nn.Module) -> bool:
    """Whether ``packed_block_forward`` reproduces ``block.forward`` (timm's pre-norm ``Block``)."""
    return isinstance(block, Block) and type(block).forward is Block.forward


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
    if type(attn).forward is not Attention.forward:
        return torch.cat([attn(seg) for seg in x.split(lengths, dim=1)], dim=1)
    gate = attn.gate(x).sigmoid() if getattr(attn, 'gate', None) is not None else None
    qkv = rearrange(attn.qkv(x), '1 t (three h d) -> three h t d', three=3, h=attn.num_heads)
    q, k, v = qkv.unbind(0)  # [H, T, D] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = []
    for qi, ki, vi in zip(q.split(lengths, dim=1), k.split(lengths, dim=1), v.split(lengths, dim=1)):
        if attn.fused_attn:
            oi = F.scaled_dot_product_attention(qi, ki, vi, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        else:
            oi = attn.attn_drop(((qi * attn.scale) @ ki.transpose(-2, -1)).softmax(dim=-1)) @ vi
        out.append(oi)
    x = rearrange(torch.cat(out, dim=1), 'h t d -> 1 t (h d)')
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


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
    x = x + block.drop_path1(block.ls1(packed_attention(block.attn, block.norm1(x), lengths)))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x


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
