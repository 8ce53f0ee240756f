"""DynamicViT keep predictor.

Paper: DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification
(Rao et al., NeurIPS 2021), arXiv:2106.02034.

The predictor scores every patch token from a local feature (the token itself) and a global
feature (the mean over the tokens still kept). Submodule indices follow the released
checkpoints (`in_conv.{0,1}`, `out_conv.{0,2,4}`) so their weights load without renaming.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.macs import linear_macs
from .weight_reads import cache_name, tracing

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

    def macs(self, num_tokens: IntOrTensor, num_images: IntOrTensor = 1, outputs: int = 2) -> IntOrTensor:
        """MACs of scoring ``num_tokens`` tokens of ``num_images`` images (``outputs=1``: the one-wide
        last layer of ``keep_scores``)."""
        half, w = self.dim // 2, self.out_conv[0].weight
        per_token = linear_macs(self) - w.shape[0] * (w.shape[1] - half) - (2 - outputs) * self.out_conv[4].in_features
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

    def keep_scores(self, x: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """Scores to rank the tokens ``[B, P + N, C]`` by, in few kernels: ``[B, P + N]``.

        A patch's score is ``l_keep - l_drop`` of the last layer's two outputs, which orders the
        patches as the keep log-probability does (``log_softmax`` is increasing in that
        difference; ``sigmoid`` of it is the keep probability), so the last layer is one output
        wide and no softmax runs. The global feature is the mean over the patches; its half of
        the first output layer is added in the same batched product as the local half. The P
        prefix tokens are scored too (the layers are per token) and get a score above every
        patch, the first prefix token the highest: a top-k over all the tokens keeps them first,
        in their order, and no concatenation is needed. Eval only (no gradient is needed here).
        """
        B, L, _ = x.shape
        half = self.dim // 2
        first, second, last = self.out_conv[0], self.out_conv[2], self.out_conv[4]
        feat = self.in_conv(x)  # [B, L, C]
        glob = feat[:, num_prefix:, half:].mean(dim=1)  # [B, C - C/2]
        g = F.linear(glob, first.weight[:, half:], first.bias)  # [B, C/2]: the same for every token of an image
        w_local = first.weight[:, :half].t().expand(B, -1, -1)  # [B, C/2, C/2] (a view)
        h = F.gelu(torch.baddbmm(g.unsqueeze(1), feat[..., :half], w_local))  # [B, L, C/2]
        h = self.out_conv[3](second(h))  # [B, L, C/4]
        w_diff, bias = self._score_layer(last, L, num_prefix, h.dtype)  # [C/4, 1], [1, L, 1]
        return torch.baddbmm(bias, h, w_diff.expand(B, -1, -1))[..., 0]  # [B, L]

    def _score_layer(self, last: nn.Linear, length: int, num_prefix: int,
                     dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(w_keep - w_drop)`` as ``[C/4, 1]`` and ``[1, L, 1]`` of ``b_keep - b_drop`` plus the
        prefix tokens' lead; cached while the weights, L and the dtype stay (computed afresh under autograd or a compiler)."""
        w, b = last.weight, last.bias
        cache = not torch.is_grad_enabled() and not tracing()
        key = (length, num_prefix, dtype, w.device, w.data_ptr(), w._version, b.data_ptr(), b._version) if cache else None
        cached = self.__dict__.get(cache_name('score_layer')) if cache else None
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        w_diff = (w[0] - w[1]).to(dtype).unsqueeze(1)  # [C/4, 1]
        big = torch.finfo(dtype).max / (4 * (num_prefix + 1))  # above any patch score, the prefix tokens apart
        lead = torch.arange(length, dtype=torch.float32, device=w.device).sub(num_prefix).clamp(max=0).mul(-big)
        bias = (lead + (b[0] - b[1]).float()).to(dtype).view(1, length, 1)
        if cache:
            self.__dict__[cache_name('score_layer')] = (key, w_diff, bias)
        return w_diff, bias

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
