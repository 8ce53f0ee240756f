"""Convolutional stem for ViTs: a few 3x3 stride-2 convolutions instead of one patchify convolution.

Paper: Early Convolutions Help Transformers See Better (Xiao et al., NeurIPS 2021), arXiv:2106.14881.
A patch size of 2^k becomes k stride-2 3x3 convolutions (BatchNorm, ReLU) whose widths double up
to the embedding width, then a 1x1 projection. It makes small ViTs trained from scratch on small
datasets (Fashion-MNIST in the zoo) converge faster and further; the token grid is the same as
the patchify stem's, so token pruning is unaffected.
"""
from typing import Any, Optional, Tuple, Union

import torch.nn as nn
from timm.layers import PatchEmbed

from ..runtime.macs import conv_macs

__all__ = ['ConvPatchEmbed']


class ConvPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose ``proj`` is a convolutional stem with the same total stride.

    Args:
        img_size: Input size (None: any size divisible by the patch size).
        patch_size: Total stride, a power of two >= 2 (the same in both directions).
        in_chans: Input channels.
        embed_dim: Token width.
        bias: Bias of the final 1x1 projection.
        **kwargs: Passed to timm's ``PatchEmbed`` (norm_layer, flatten, output_fmt, strict_img_size, ...).
    """

    def __init__(self, img_size: Optional[Union[int, Tuple[int, int]]] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         bias=bias, **kwargs)
        ph, pw = self.patch_size
        if ph != pw or ph < 2 or ph & (ph - 1):
            raise ValueError(f"the convolutional stem ('stem': 'conv') needs a square power-of-two patch size >= 2, "
                             f"got {self.patch_size}")
        num_down = ph.bit_length() - 1
        layers, width = [], in_chans
        for i in range(num_down):  # widths embed_dim / 2^(k-1), ..., embed_dim / 2, embed_dim
            out = max(8, embed_dim >> (num_down - 1 - i))
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            width = out
        layers.append(nn.Conv2d(width, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        if patch_size is not None and tuple(nn.modules.utils._pair(patch_size)) != tuple(self.patch_size):
            raise ValueError('the patch size of a convolutional stem cannot be changed after building')
        super().set_input_size(img_size=img_size)

    def macs(self, num_patches: int) -> int:
        """MACs of the stem for an image that yields ``num_patches`` tokens (each stride-2
        convolution's output has 4x the positions of the next one's)."""
        convs = [m for m in self.proj if isinstance(m, nn.Conv2d)]
        return sum(conv_macs(c, num_patches * 4 ** (len(convs) - 2 - i)) for i, c in enumerate(convs[:-1])) \
            + conv_macs(convs[-1], num_patches)
