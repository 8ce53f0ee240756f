"""Per-image sparsity reports: what each image kept, the MACs it cost, and what that saved."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from .macs import dense_vit_macs


@dataclass
class ImageReport:
    """One image.

    Attributes:
        kept: ViTs: patch tokens kept (given the full update) in each stage. CNNs: channels
            kept by each gated layer.
        macs: Multiply-accumulates spent on the image, predictors, gates and token selection
            included (gathers and packing move memory and cost no MACs).
        dense_macs: MACs of the same backbone without sparsification.
        per_block: ViTs: tokens each transformer block computed, prefix tokens included.
            CNNs: channels each gated layer chooses from.
    """
    kept: List[int]
    macs: int
    dense_macs: int
    per_block: List[int] = field(default_factory=list)

    @property
    def saved_fraction(self) -> float:
        """1 - macs / dense_macs."""
        return 1.0 - self.macs / self.dense_macs


@dataclass
class SparsityReport:
    """A batch of ``ImageReport``; MACs are multiply-accumulates (FLOPs = 2 x MACs).

    Attributes:
        images: One report per image.
        total: What ``kept`` is counted out of: patches (ViTs) or gated channels (CNNs).
        stage_label, per_block_label: Column titles of ``kept`` and ``per_block``.
        total_label: What ``total`` counts.
        kept_style: 'stages' prints ``kept`` as ``a / b / c``, 'runs' run-length encoded.
        executed_macs: Mean MACs per image the pass computed, when it differs from what the images
            needed (channel-gated CNNs whose blocks ran the union of the batch's channels).
    """
    images: List[ImageReport] = field(default_factory=list)
    total: int = 0
    stage_label: str = 'kept patch tokens per stage'
    per_block_label: str = 'tokens per block'
    total_label: str = 'patches'
    kept_style: str = 'stages'
    executed_macs: Optional[float] = None

    @property
    def mean_macs(self) -> float:
        return sum(r.macs for r in self.images) / max(len(self.images), 1)

    @property
    def dense_macs(self) -> int:
        return self.images[0].dense_macs if self.images else 0

    @property
    def saved_fraction(self) -> float:
        """Mean fraction of MACs saved over the batch."""
        return 1.0 - self.mean_macs / self.dense_macs if self.images else 0.0

    def to_dict(self) -> dict:
        return dict(
            unit='MACs',
            total=self.total,
            total_label=self.total_label,
            mean_macs=self.mean_macs,
            dense_macs=self.dense_macs,
            saved_fraction=self.saved_fraction,
            stage_label=self.stage_label,
            per_block_label=self.per_block_label,
            executed_macs=self.executed_macs,
            images=[dict(kept=r.kept, per_block=r.per_block, macs=r.macs,
                         dense_macs=r.dense_macs, saved_fraction=r.saved_fraction) for r in self.images],
        )

    def kept_text(self, kept: List[int]) -> str:
        """``kept`` (one image's) as reports print it."""
        if self.kept_style == 'runs':
            return run_length(kept)
        return ' / '.join(str(k) for k in kept) or '-'

    def __str__(self) -> str:
        width = max([30, len(self.stage_label)] + [len(self.kept_text(r.kept)) for r in self.images])
        width2 = max([24, len(self.per_block_label)] + [len(run_length(r.per_block)) for r in self.images])
        rows = [f'{"image":>5}  {self.stage_label:<{width}} {self.per_block_label:<{width2}} '
                f'{"GMACs":>7} {"dense":>7} {"saved":>6}']
        for i, r in enumerate(self.images):
            rows.append(f'{i:>5}  {self.kept_text(r.kept):<{width}} {run_length(r.per_block):<{width2}} '
                        f'{r.macs / 1e9:>7.3f} {r.dense_macs / 1e9:>7.3f} {r.saved_fraction:>6.1%}')
        rows.append(f'{"mean":>5}  {f"of {self.total} {self.total_label}":<{width}} {"":<{width2}} '
                    f'{self.mean_macs / 1e9:>7.3f} {self.dense_macs / 1e9:>7.3f} {self.saved_fraction:>6.1%}')
        note = ''
        if self.executed_macs is not None and self.executed_macs != self.mean_macs:
            note = (f'\nthis batch computed {self.executed_macs / 1e9:.3f} GMACs per image: some blocks ran the union '
                    f'of the images\' kept channels (execution \'union\', or \'auto\' on small maps)')
        return '\n'.join(rows) + '\n(GMACs = 10^9 multiply-accumulates; FLOPs = 2 x MACs)' + note


def run_length(values: List[int]) -> str:
    """Run-length form of per-block counts: [197, 197, 100] -> '197x2 100'."""
    out: List[str] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ' '.join(f'{v}x{n}' if n > 1 else str(v) for v, n in out) or '-'


@torch.no_grad()
def profile(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, SparsityReport]:
    """Runs ``model`` on ``x`` as it is configured and reports, per image, what it kept and spent.

    Works for dynvit's dynamic models (``model(x, return_aux=True)`` gives their decisions and
    MACs) and for plain timm ViTs (dense: nothing saved).

    Args:
        model: A dynvit model or a timm ``VisionTransformer``.
        x: Images ``[B, C, H, W]``.

    Returns:
        The logits ``[B, num_classes]`` and the ``SparsityReport``.
    """
    if getattr(model, 'kept_unit', None):  # a dynvit model (the DynamicModel protocol)
        logits, aux = model(x, return_aux=True)
        images = [ImageReport(k, int(m), aux.dense_macs, p)
                  for k, m, p in zip(aux.kept.tolist(), aux.macs.tolist(), aux.per_block.tolist())]
        report = SparsityReport(images, aux.kept_total, model.stage_label, model.per_block_label, model.total_label,
                                model.kept_style)
        report.executed_macs = aux.executed_macs.double().mean().item()
        return logits, report
    if isinstance(model, VisionTransformer):
        logits = model(x)
        grid = model.patch_embed.dynamic_feat_size(x.shape[-2:]) if model.dynamic_img_size else model.patch_embed.grid_size
        num_patches = grid[0] * grid[1]
        dense = dense_vit_macs(model, num_patches)
        tokens = [num_patches + model.num_prefix_tokens] * len(model.blocks)
        images = [ImageReport([], dense, dense, tokens) for _ in range(x.shape[0])]
        return logits, SparsityReport(images, num_patches)
    raise TypeError(f'cannot profile {type(model).__name__}: not a dynvit model or a timm VisionTransformer')
