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


def packed_block_forward(block: Block, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Runs a timm ``Block`` on several images packed into one sequence.

    Norms, LayerScale and the MLP run once on all packed tokens; attention runs per image
    through the block's own attention module, so its options (qk-norm, fused SDPA) apply.

    Args:
        block: A timm ``Block`` (see ``is_packable``).
        x: Packed tokens ``[1, T, C]``, image after image.
        lengths: Tokens per image, summing to T.

    Returns:
        ``[1, T, C]``.
    """
    h = block.norm1(x)
    attn = torch.cat([block.attn(seg) for seg in h.split(list(lengths), dim=1)], dim=1)
    x = x + block.drop_path1(block.ls1(attn))
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


def split_lengths(mask: torch.Tensor) -> List[int]:
    """Per-row counts of a boolean mask ``[B, N]`` as Python ints."""
    return mask.sum(dim=1).tolist()
