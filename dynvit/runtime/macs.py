"""Analytic MAC counts from real shapes, and a cross-check with torch's FLOP counter.

A MAC is one multiply-accumulate; FLOPs = 2 x MACs. Like the papers (DeiT-S = 4.6 G), we
count the matrix products: linear layers, convolutions, and the two attention products
(q @ k^T and attn @ v). Norms, activations, softmax, gathers and additions are not counted.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

IntOrTensor = Union[int, torch.Tensor]


def is_linear(m: nn.Module) -> bool:
    """``nn.Linear``, or its INT8 replacement by PyTorch's quantization (same products, other storage)."""
    return isinstance(m, (nn.Linear, torch.ao.nn.quantized.Linear))


def linear_macs(module: nn.Module) -> int:
    """MACs per token of every linear layer (``is_linear``) inside ``module`` (including itself)."""
    return sum(m.in_features * m.out_features for m in module.modules() if is_linear(m))


def conv_macs(module: nn.Module, out_positions: int) -> int:
    """MACs of every ``nn.Conv2d`` inside ``module`` for ``out_positions`` output pixels each."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += m.out_channels * (m.in_channels // m.groups) * kh * kw * out_positions
    return total


def attention_macs(attn: nn.Module, num_tokens: IntOrTensor) -> IntOrTensor:
    """MACs of q @ k^T and attn @ v for ``num_tokens`` tokens (``attn`` is a timm Attention)."""
    attn_dim = attn.num_heads * attn.head_dim
    return 2 * num_tokens * num_tokens * attn_dim


def block_macs(
        block: nn.Module,
        num_tokens: IntOrTensor,
        mlp_tokens: Optional[IntOrTensor] = None,
        query_tokens: Optional[IntOrTensor] = None,
) -> IntOrTensor:
    """MACs of a timm transformer block on ``num_tokens`` tokens.

    Args:
        block: A timm ``Block``.
        num_tokens: Tokens entering it (its keys and values).
        mlp_tokens: Tokens its MLP computed when the block reduced them between attention and MLP
            (merging), else ``num_tokens``.
        query_tokens: Tokens whose attention rows, output projection and MLP it computed when it
            kept only those after its keys and values (sampling), else ``num_tokens``.
    """
    if query_tokens is not None:
        qkv = linear_macs(block.attn.qkv)
        attn_dim = block.attn.num_heads * block.attn.head_dim
        return qkv * num_tokens + (linear_macs(block) - qkv) * query_tokens + 2 * query_tokens * num_tokens * attn_dim
    macs = linear_macs(block) * num_tokens + attention_macs(block.attn, num_tokens)
    if mlp_tokens is None:
        return macs
    return macs - linear_macs(block.mlp) * (num_tokens - mlp_tokens)


def vit_macs(
        model: nn.Module,
        tokens_per_block: torch.Tensor,
        num_patches: int,
        mlp_tokens_per_block: Optional[torch.Tensor] = None,
        query_tokens_per_block: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MACs per image of a timm ``VisionTransformer`` given the tokens entering each block.

    Args:
        model: The ViT (only its modules' shapes are read).
        tokens_per_block: ``[B, depth]`` token counts, prefix tokens included.
        num_patches: Patches produced by the patch embedding.
        mlp_tokens_per_block: ``[B, depth]`` tokens each block's MLP computed, where blocks reduce
            their tokens after the attention (None: ``tokens_per_block``).
        query_tokens_per_block: ``[B, depth]`` tokens whose attention rows, projection and MLP
            each block computed, where blocks keep a subset after their keys and values (None:
            ``tokens_per_block``).

    Returns:
        ``[B]`` int64 MACs: patch embedding + blocks + head (attention-pooling heads are not counted).
    """
    tokens = tokens_per_block.long()
    mlp = None if mlp_tokens_per_block is None else mlp_tokens_per_block.long()
    queries = None if query_tokens_per_block is None else query_tokens_per_block.long()
    total = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for i, blk in enumerate(model.blocks):
        total += block_macs(blk, tokens[:, i], None if mlp is None else mlp[:, i],
                            None if queries is None else queries[:, i])
    embed = model.patch_embed  # a convolutional stem (ConvPatchEmbed) counts its own layers
    total += (embed.macs(num_patches) if hasattr(embed, 'macs') else conv_macs(embed, num_patches))
    total += linear_macs(model.head)
    return total


def dense_vit_macs(model: nn.Module, num_patches: int) -> int:
    """MACs of one image through a dense timm ViT with ``num_patches`` patches (``vit_macs`` with
    every block on all tokens, in Python ints: no tensor, so nothing to sync in a compiled graph)."""
    tokens = num_patches + model.num_prefix_tokens
    embed = model.patch_embed
    return (sum(int(block_macs(blk, tokens)) for blk in model.blocks)
            + (embed.macs(num_patches) if hasattr(embed, 'macs') else conv_macs(embed, num_patches))
            + linear_macs(model.head))


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop(query_shape, key_shape, value_shape)


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    (m, k), n = a_shape, b_shape[1]
    return 2 * m * k * n  # as torch counts addmm: the products only


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` as counted by ``torch.utils.flop_counter.FlopCounterMode``.

    torch's counter has no formula for the CPU flash-attention kernel nor for the fused
    product and ReLU (``aten._addmm_activation``, the channel gates at inference), so they are
    registered here (the formulas torch uses for the CUDA kernels and for ``addmm``).
    """
    custom = {torch.ops.aten._addmm_activation: _addmm_flop}
    if hasattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu'):
        custom[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        model(x)
    return int(counter.get_total_flops())


def conv2d_macs(
        conv: nn.Conv2d,
        out_hw: Sequence[int],
        in_channels: Optional[IntOrTensor] = None,
        out_channels: Optional[IntOrTensor] = None,
) -> IntOrTensor:
    """MACs of one Conv2d producing an ``out_hw`` map, on a subset of its channels.

    Args:
        conv: The convolution (dense, grouped or depthwise).
        out_hw: Output height and width.
        in_channels: Input channels read (default all); per image as a tensor if they differ.
        out_channels: Output channels computed (default all). For a depthwise convolution
            each output channel reads one input channel whatever ``in_channels`` is.
    """
    kh, kw = conv.kernel_size
    cout = conv.out_channels if out_channels is None else out_channels
    if conv.groups > 1 and conv.groups == conv.in_channels:
        per_output = 1  # depthwise
    else:
        per_output = (conv.in_channels if in_channels is None else in_channels) // conv.groups
    return cout * per_output * kh * kw * int(out_hw[0]) * int(out_hw[1])
