"""Attention under a keep policy, on top of timm's ``Attention``.

DynamicViT (arXiv:2106.02034) trains its predictors through a policy-weighted softmax,
``a_ij = exp(s_ij) G_ij / sum_k exp(s_ik) G_ik`` with ``G_ij = p_j + (1 - p_j) [i == j]``:
dropped keys (p_j = 0) get no weight, yet the gradient w.r.t. p_j is not zero, which tells
a predictor when a dropped token would have helped. Hiding keys with -inf in an SDPA mask
gives the right forward but no gradient for dropped tokens. ``policy_attention`` gives both:
the output of the exact (hard) masked attention, and, when the mask carries gradient, the
gradient of the policy-weighted softmax, from a second SDPA on detached q/k/v whose additive
mask is ``log(G + eps)`` (a straight-through term that adds nothing to the forward).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention

POLICY_EPS = 1e-6
_LOG_HALF = math.log(0.5)


def policy_bias(keep: torch.Tensor) -> torch.Tensor:
    """Additive mask ``log(G + eps)`` of a keep policy over the keys.

    Args:
        keep: Keep decisions over all tokens ``[B, L]`` in {0, 1}, may carry gradient.

    Returns:
        ``[B, 1, L, L]``: about 0 where query i may see key j (kept, or j == i), log(eps) elsewhere.
    """
    L = keep.shape[1]
    g = keep[:, None, None, :]  # [B, 1, 1, L]
    eye = torch.eye(L, dtype=keep.dtype, device=keep.device)
    visible = g + (1.0 - g) * eye  # G, [B, 1, L, L]
    return torch.log(visible + POLICY_EPS)


def attend(q, k, v, mask: Optional[torch.Tensor], fused: bool, scale: float, dropout_p: float) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` through SDPA (``fused``) or written out, as timm's Attention does."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    attn = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        attn = attn + mask
    attn = attn.softmax(dim=-1)
    if dropout_p > 0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def policy_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        fused: bool = True,
        scale: Optional[float] = None,
        dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of ``q`` over the keys that ``bias`` (from ``policy_bias``) keeps visible.

    Forward: exactly attention with the hidden keys removed. Backward: q, k, v get the
    gradients of that exact attention; ``bias`` (hence the policy) gets the gradient of the
    policy-weighted softmax.

    Args:
        q, k, v: ``[B, H, L, D]``.
        bias: ``[B, 1, L, L]`` policy mask.
        fused: Use ``F.scaled_dot_product_attention`` (else explicit softmax).
        scale: Softmax scale (default ``D ** -0.5``).
        dropout_p: Attention dropout of the exact branch.

    Returns:
        ``[B, H, L, D]``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    hard = torch.zeros(bias.shape, dtype=q.dtype, device=q.device).masked_fill_(bias.detach() < _LOG_HALF, float('-inf'))
    out = attend(q, k, v, hard, fused, scale, dropout_p)
    if bias.requires_grad:
        soft = attend(q.detach(), k.detach(), v.detach(), bias.to(q.dtype), fused, scale, 0.0)
        out = out + (soft - soft.detach())
    return out


def split_qkv(attn: Attention, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """q, k, v ``[B, H, N, D]`` (qk-norm applied) and the output gate (or None) of a timm ``Attention``."""
    gate = attn.gate(x).sigmoid() if getattr(attn, 'gate', None) is not None else None
    q, k, v = rearrange(attn.qkv(x), 'b n (three h d) -> three b h n d', three=3, h=attn.num_heads).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v, gate


def merge_heads(attn: Attention, o: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    """Output projection of a timm ``Attention`` for per-head outputs ``[B, H, N, D]``."""
    x = attn.norm(rearrange(o, 'b h n d -> b n (h d)'))
    if gate is not None:
        x = x * gate
    return attn.proj_drop(attn.proj(x))


def class_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The class token's attention over all keys, averaged over heads.

    Only row 0 of the attention map is computed, ``softmax(q_0 k^T * scale)``: ``L`` products per
    head instead of ``L^2``.

    Args:
        q, k: ``[B, H, L, D]`` (token 0 is the class token).
        scale: Softmax scale.

    Returns:
        ``[B, L]`` float32 (whatever the dtype of q and k: fine ranks).
    """
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)  # [B, H, 1, L]
    return logits.float().softmax(dim=-1).mean(dim=1)[:, 0]


def attention_with_class_row(
        attn: Attention,
        x: torch.Tensor,
        keep_grad: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A timm ``Attention``'s output and the class token's attention row (``class_attention_row``).

    The attention itself stays fused (SDPA); the row is computed apart from the same q and k.

    Args:
        attn: A timm ``Attention`` (see ``token_ops.is_timm_attention``).
        x: Normalised tokens ``[B, L, C]``, the class token first.
        keep_grad: Let the row carry gradient to q and k (when it weighs tokens); else it is
            computed without (when it only ranks them).

    Returns:
        The attention output ``[B, L, C]`` and the row ``[B, L]`` (float32).
    """
    q, k, v, gate = split_qkv(attn, x)  # [B, H, L, D]
    with torch.set_grad_enabled(keep_grad and torch.is_grad_enabled()):
        row = class_attention_row(q, k, attn.scale)
    dropout_p = attn.attn_drop.p if attn.training else 0.0
    return merge_heads(attn, attend(q, k, v, None, attn.fused_attn, attn.scale, dropout_p), gate), row


class PolicyAttention(Attention):
    """timm ``Attention`` that reads a float ``attn_mask`` as a keep policy (``policy_bias``).

    Same parameters and outputs as timm's ``Attention``; a boolean mask, no mask or
    ``is_causal`` go to timm's own forward.
    """

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is None or is_causal or attn_mask.dtype == torch.bool:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        q, k, v, gate = split_qkv(self, x)
        dropout_p = self.attn_drop.p if self.training else 0.0
        o = policy_attention(q, k, v, attn_mask, fused=self.fused_attn, scale=self.scale, dropout_p=dropout_p)
        return merge_heads(self, o, gate)
