"""DynamicViT keep predictor.

Paper: DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification
(Rao et al., NeurIPS 2021), arXiv:2106.02034.

The predictor scores every patch token from a local feature (the token itself) and a global
feature (the mean over the tokens still kept). Submodule indices follow the released
checkpoints (`in_conv.{0,1}`, `out_conv.{0,2,4}`) so their weights load without renaming.
"""
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.macs import linear_macs

IntOrTensor = Union[int, torch.Tensor]


class KeepPredictor(nn.Module):
    """Scores patch tokens: returns log-probabilities ``[..., 2]``, channel 0 = keep.

    Args:
        dim: Token embedding width C.
    """

    reads_layer_weights = True  # forward_packed reads its layers' weights (dynvit.layers.weight_reads)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def _score(self, feat: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        # out_conv[0] sees [local, global]; its global half is the same for all tokens of an
        # image, so it is computed once per image and broadcast (same result as concatenating).
        half = self.dim // 2
        first = self.out_conv[0]
        h = F.linear(feat[..., :half], first.weight[:, :half]) + F.linear(global_feat, first.weight[:, half:], first.bias)
        return self.out_conv[1:](h)

    def macs(self, num_tokens: IntOrTensor, num_images: IntOrTensor = 1) -> IntOrTensor:
        """MACs of scoring ``num_tokens`` tokens of ``num_images`` images."""
        half, w = self.dim // 2, self.out_conv[0].weight
        per_token = linear_macs(self) - w.shape[0] * (w.shape[1] - half)
        return per_token * num_tokens + w.shape[0] * (w.shape[1] - half) * num_images

    def forward(self, x: torch.Tensor, policy: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores a rectangular batch.

        Args:
            x: Patch tokens ``[B, N, C]``.
            policy: Current keep decisions ``[B, N]`` (1 = kept). The global feature is the
                policy-weighted mean; None means every token counts.

        Returns:
            Log-probabilities ``[B, N, 2]``.
        """
        feat = self.in_conv(x)
        glob = feat[..., self.dim // 2:]
        if policy is None:
            global_feat = glob.mean(dim=1, keepdim=True)  # [B, 1, C - C/2]
        else:
            w = policy.unsqueeze(-1).to(glob.dtype)
            global_feat = (glob * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return self._score(feat, global_feat)

    def forward_packed(self, x: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
        """Scores tokens of several images packed into one sequence.

        Args:
            x: Packed patch tokens ``[T, C]``.
            segment_ids: Image index of every token ``[T]``.
            num_segments: Number of images B.

        Returns:
            Log-probabilities ``[T, 2]``; the global feature is the mean over each image's tokens.
        """
        feat = self.in_conv(x)
        glob = feat[:, self.dim // 2:]
        sums = glob.new_zeros(num_segments, glob.shape[1]).index_add_(0, segment_ids, glob)
        counts = torch.bincount(segment_ids, minlength=num_segments).clamp_min(1).unsqueeze(1)
        global_feat = (sums / counts.to(glob.dtype))[segment_ids]  # [T, C - C/2]
        return self._score(feat, global_feat)
