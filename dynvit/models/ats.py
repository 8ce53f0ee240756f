"""ATS on timm's VisionTransformer.

Paper: Adaptive Token Sampling For Efficient Vision Transformers (Fayyaz, Koohpayegani, Jafari,
Sengupta, Joze, Sommerlade, Pirsiavash, Gall; ECCV 2022), arXiv:2111.15667.

Parameter-free and training-free: in each block of ``ats_blocks`` the patch tokens are scored by
the class token's attention times their value norm, and ``ceil(budget * N)`` points of the
cumulative score, evenly spaced, pick the tokens to keep (``dynvit.layers.token_sampling``). The
count differs per image: a batch runs packed from the first ATS block on (token-wise layers over
all kept tokens at once, attention per image), so a batch computes what its images would alone
and ``aux.macs`` counts each image's own tokens.

Compatibility with the released code (adaptivetokensampling/ATS, ``ats_block.py``), whose per-image
eval path this reproduces (``tests/fixtures/official/ats_tiny_*``): the same score, cdf, points
(``budget`` such that ``ceil(budget * N) = N``: any value above ``(N - 1) / N``, e.g. 0.999, is the
released setting, which samples N points in every block) and nearest-cdf picks; a kept token's
attention row is computed over all the block's keys, as released. Differences: the kept tokens
stay in their input order (released: least significant first; the order changes no output); the
softmax is timm's (released: ``(e + 1e-6 / n) / (sum + 1e-6)`` in every block, which moves logits
by ~1e-7 and can flip a pick whose two nearest cdf values are closer than that); the released
batched path pads images with masked tokens that still take attention weight, so its batch
outputs differ from single images (by up to 0.4 on the fixtures): here a batch equals its images
run alone. The released code fails for fewer points than tokens; here any budget in (0, 1) works.
``budget=1.0`` samples nothing: the dense model.

``budget`` and ``ats_blocks`` are plain attributes: change them on a built model. ``apply_ats``
(``dynvit.apply(vit, 'ats', ...)``) turns a built timm ``VisionTransformer`` into an ATS model.
"""
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models import generate_default_cfgs, register_model

from ..families import spec_of
from ..layers import packed_block_forward, packed_padding, sampling_block_forward, unpack_tokens
from ..losses import ClassificationLoss, ObjectiveConfig
from ..runtime.macs import vit_macs
from ._apply import register_method
from ._base import setting
from ._helpers import run_block, vit_cfg
from ._staged import block_indices, per_stage_ratio
from ._token_vit import (
    TokenAux,
    TokenSparseViT,
    adopt_plain_vit,
    build_token_vit,
    check_attention_blocks,
    deit_cfgs,
    pico_28_args,
    pico_cfgs,
    tiny_test_cfgs,
    token_vit_checkpoint_filter,
)

__all__ = ['ATSAux', 'ATSViT', 'apply_ats', 'default_ats_blocks']


@dataclass
class ATSAux(TokenAux):
    """What a forward pass kept, per image (and, from ``TokenAux``, the MACs, the grid and the
    padded output's ``token_mask``).

    Stage s is the ATS block ``ats_blocks[s]`` that sampled (a budget of 1.0 samples nothing and
    is no stage); positions refer to the original patch grid (row-major, N patches).

    Attributes:
        kept_patches: Per stage ``[B, N]`` float: 1 for the patches still a token after it.
        tokens_per_block: ``[B, depth]`` tokens entering each block (its keys; prefix included).
        query_tokens: ``[B, depth]`` tokens whose attention rows, projection and MLP each block
            computed (fewer than ``tokens_per_block`` in an ATS block).
        sampled_blocks: The blocks that sampled, one per stage.
        num_points: Per stage, the points sampled (``ceil(budget * N)``).
        num_patches: N.
    """
    kept_patches: List[torch.Tensor]
    tokens_per_block: torch.Tensor
    query_tokens: torch.Tensor
    sampled_blocks: Tuple[int, ...]
    num_points: Tuple[int, ...]
    num_patches: int

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        return self.kept_patches

    @property
    def mlp_tokens_per_block(self) -> torch.Tensor:
        return self.query_tokens


def default_ats_blocks(depth: int) -> Tuple[int, ...]:
    """The released schedule, every block from the fourth of 12 on (3..11), scaled to ``depth``."""
    return tuple(range(max(1, depth // 4), depth))


class _Trace:
    """The counts and kept patches of a pass: tokens into each block, its query tokens, and per
    stage which patches are left (original positions)."""

    def __init__(self, batch: int, num_prefix: int, num_patches: int, device: torch.device, track: bool) -> None:
        self.P, self.N, self.device, self.track = num_prefix, num_patches, device, track
        self.keys: List[List[int]] = []  # per block, per image
        self.queries: List[List[int]] = []
        self.kept: List[torch.Tensor] = []
        self.blocks: List[int] = []
        self.points: List[int] = []
        self.patch_of = torch.arange(num_patches, device=device).expand(batch, -1)  # [B, n]: current token -> patch

    def block(self, keys: List[int], queries: List[int]) -> None:
        self.keys.append(keys)
        self.queries.append(queries)

    def stage(self, block: int, points: int, keep: torch.Tensor) -> None:
        """Block ``block`` kept ``keep`` ``[B, L]`` (prefix first, padding False) of its tokens
        (the patches it kept are tracked only for an aux that is wanted)."""
        self.blocks.append(block)
        self.points.append(points)
        if not self.track:
            return
        picked = keep[:, self.P:self.P + self.patch_of.shape[1]]
        patches = self.patch_of[picked]  # the kept patches, image after image
        index, valid = packed_padding(picked.sum(dim=1).tolist(), self.device)
        self.patch_of = torch.where(valid, patches[index], -1)
        slots = torch.where(valid, self.patch_of, self.N)
        mask = torch.zeros(keep.shape[0], self.N + 1, device=self.device).scatter_(1, slots, 1.0)
        self.kept.append(mask[:, :self.N])

    def aux(self, **kwargs: Any) -> ATSAux:
        as_tensor = partial(torch.tensor, dtype=torch.long, device=self.device)
        return ATSAux(kept_patches=self.kept, tokens_per_block=as_tensor(self.keys).T,
                      query_tokens=as_tensor(self.queries).T, sampled_blocks=tuple(self.blocks),
                      num_points=tuple(self.points), num_patches=self.N, **kwargs)


class ATSViT(TokenSparseViT):
    """timm ``VisionTransformer`` with adaptive token sampling.

    Args:
        ats_blocks: Blocks that sample the tokens to keep (after their keys and values); default
            ``default_ats_blocks(depth)``, 3..11 for 12 blocks.
        budget: Per ATS block, the points sampled as a fraction of the patches N,
            ``ceil(budget * N)``; one float for all or one per block of ``ats_blocks``; 1.0
            samples nothing (that block stays dense).
        **kwargs: ``stem`` ('patch' or 'conv', see ``TokenSparseViT``) and timm's
            ``VisionTransformer`` arguments (it needs a class token).
    """
    spec = spec_of('ATS')
    sparsity_args = ('ats_blocks', 'budget')
    class_token_use = 'scores tokens by the attention of the class token'

    ats_blocks = setting('ats_blocks', 'Blocks that sample the tokens to keep.')
    budget = setting('budget', 'Per ATS block, the points sampled as a fraction of the patches (1.0: none).')

    def __init__(
            self,
            *,
            ats_blocks: Optional[Sequence[int]] = None,
            budget: Union[float, Sequence[float]] = 0.999,
            **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_sampling(ats_blocks=ats_blocks, budget=budget)

    def _init_sampling(self, ats_blocks: Optional[Sequence[int]] = None,
                       budget: Union[float, Sequence[float]] = 0.999) -> None:
        """The settings' state (also what ``apply_ats`` gives a plain timm model)."""
        check_attention_blocks(self, 'samples tokens')
        if budget is None:
            raise ValueError('budget cannot be None')
        self._sparsity = {}
        self._update_sparsity(dict(ats_blocks=default_ats_blocks(len(self.blocks)) if ats_blocks is None
                                   else ats_blocks, budget=budget))

    # ---- sparsity settings (changeable on a built model) ----
    def _checked_sparsity(self, current: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        """New blocks keep a single budget for all of them; per-block budgets come with them."""
        blocks = current.get('ats_blocks')
        if 'ats_blocks' in given:
            blocks = block_indices(given['ats_blocks'], 'ats_blocks', 0, len(self.blocks))
        old = current.get('budget', ())
        if 'budget' in given:
            value = given['budget']
        elif len(old) == len(blocks) or len(set(old)) > 1:
            value = old
        else:
            value = old[0]
        budget = per_stage_ratio(value, len(blocks), 'ATS blocks (ats_blocks)',
                                 'the points each ATS block samples as a fraction of the patches', 'budget')
        return dict(ats_blocks=blocks, budget=budget)

    def _sparsity_changed(self) -> None:
        self._budget_of_block = dict(zip(self.ats_blocks, self.budget))

    @property
    def sparsity_level(self) -> Tuple[float, ...]:
        """The budget, one value while every ATS block has the same, else one per block."""
        return self.budget if len(set(self.budget)) > 1 else self.budget[:1]

    def num_points(self, block: int, num_patches: int) -> Optional[int]:
        """Points block ``block`` samples for ``num_patches`` patches: ``ceil(budget * N)``, None
        where it samples nothing (not an ATS block, or budget 1.0)."""
        budget = self._budget_of_block.get(block, 1.0)
        return None if budget >= 1.0 else max(1, math.ceil(budget * num_patches))

    def static_graph_problem(self) -> Optional[str]:
        if all(b >= 1.0 for b in self.budget):
            return None
        return ('ATS keeps a different number of tokens per image (data-dependent shapes, packed execution with '
                'a host sync per ATS block); set budget=1.0 for a static graph')

    def training_objective(self, config: ObjectiveConfig) -> ClassificationLoss:
        """Cross-entropy and logit distillation: sampling has nothing of its own to train."""
        return ClassificationLoss(base_criterion=config.criterion(), **config.distillation())

    # ---- forward ----
    def _forward_tokens(self, images: torch.Tensor, want_aux: bool) -> Tuple[torch.Tensor, Optional[ATSAux]]:
        """Embeds and runs the blocks, sampling the tokens to keep in the ATS blocks.

        Args:
            images: ``[B, C, H, W]``.
            want_aux: Also make the ``ATSAux`` (a pass that pools over the tokens makes one
                anyway, without the kept patches: its ``token_mask`` marks the output's padding).

        Returns:
            Tokens ``[B, P + n, C]`` after the final norm (prefix tokens, then each image's kept
            tokens in their original order, zero-padded to the longest image once a block
            sampled), and the aux.
        """
        x = self._embed(images)
        B, L, C = x.shape
        P = self.num_prefix_tokens
        trace = _Trace(B, P, L - P, x.device, track=want_aux)
        lengths: Optional[List[int]] = None  # tokens per image once packed ([1, T, C]); None: [B, L, C]
        for i, block in enumerate(self.blocks):
            points = self.num_points(i, L - P)
            keys = [x.shape[1]] * B if lengths is None else lengths
            if points is not None:
                if lengths is None:
                    x, lengths = x.reshape(1, B * L, C), keys
                x, keep, lengths = run_block(self, sampling_block_forward, block, x, lengths, P, points)
                trace.stage(i, points, keep)
            elif lengths is None:
                x = self._block(block, x)
            else:
                x = run_block(self, packed_block_forward, block, x, lengths)
            trace.block(keys, keys if points is None else lengths)
        x = self.norm(x)
        token_mask = None
        if lengths is not None:
            x, token_mask = unpack_tokens(x, lengths)
        if not want_aux and (token_mask is None or self.global_pool == 'token'):
            return x, None  # nothing but the class token is read
        # not wanted but pooled: the aux carries the output's token_mask (no kept patches tracked)
        return x, trace.aux(features=x, token_mask=token_mask, grid=self._patch_grid(images))

    # ---- MACs ----
    def _spent_macs(self, aux: ATSAux) -> torch.Tensor:
        """Blocks on the keys and queries they computed, the patch embedding, the head and the
        class rows of the sampling."""
        return vit_macs(self, aux.tokens_per_block, aux.num_patches, query_tokens_per_block=aux.query_tokens) \
            + self._selection_macs(aux)

    def _selection_macs(self, aux: ATSAux) -> torch.Tensor:
        """The class token's attention row over the keys of each ATS block (``q_cls K^T``)."""
        macs = torch.zeros_like(aux.tokens_per_block[:, 0])
        for i in aux.sampled_blocks:
            attn = self.blocks[i].attn
            macs = macs + aux.tokens_per_block[:, i] * (attn.num_heads * attn.head_dim)
        return macs


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ATSViT) -> Dict[str, torch.Tensor]:
    """Maps a dense timm/DeiT ViT checkpoint, the released ATS code's (timm's keys, plus the
    ``attn.out_zero_mask`` buffers of its ATS blocks, dropped) or another family's (its backbone)
    onto ``model``; key layouts that fit none of these raise a ValueError naming the keys."""
    return token_vit_checkpoint_filter(state_dict, model, drop_suffixes=('attn.out_zero_mask',))


# _create_*(variant, model_args, pretrained, **kwargs): the variant built with its family's checkpoint filter
_create_ats = partial(build_token_vit, ATSViT, checkpoint_filter_fn)
_cfg = partial(vit_cfg, spec=ATSViT.spec, classifier='head')

default_cfgs = generate_default_cfgs({
    # timm's DeiT ImageNet-1k weights: ATS is training-free, the paper's numbers are on these as they are
    **deit_cfgs('ats', _cfg, 'ATS needs no training: DeiT as it is, with sampling in blocks 3..11'),
    **tiny_test_cfgs(('test_ats', 'test_ats2'), _cfg),
    **pico_cfgs('ats_pico_patch4_28', _cfg),  # the zoo's files of it (weights/)
})


def _ats_deit_args(embed_dim: int, num_heads: int) -> Dict[str, Any]:
    """DeiT geometry with the released schedule: ATS in blocks 3..11, N points each (budget 0.999)."""
    return dict(patch_size=16, embed_dim=embed_dim, depth=12, num_heads=num_heads, budget=0.999)


@register_model
def ats_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """ATS on DeiT-Tiny (192 wide, 12 blocks), 196 points in each of blocks 3..11 (the released setting)."""
    return _create_ats('ats_tiny_patch16_224', _ats_deit_args(embed_dim=192, num_heads=3), pretrained, **kwargs)


@register_model
def ats_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """ATS on DeiT-Small (384 wide, 12 blocks), 196 points in each of blocks 3..11 (the released setting)."""
    return _create_ats('ats_small_patch16_224', _ats_deit_args(embed_dim=384, num_heads=6), pretrained, **kwargs)


@register_model
def ats_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """ATS on DeiT-Base (768 wide, 12 blocks), 196 points in each of blocks 3..11 (the released setting)."""
    return _create_ats('ats_base_patch16_224', _ats_deit_args(embed_dim=768, num_heads=12), pretrained, **kwargs)


@register_model
def ats_pico_patch4_28(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """ATS on the zoo's 28-px ViT (patch 4: 49 patches; 96 wide, 6 blocks, 3 heads, convolutional
    stem). By default sampling in blocks 1..5, 49 points each (budget 0.999, the released setting)."""
    model_args = pico_28_args(ats_blocks=(1, 2, 3, 4, 5), budget=0.999)
    return _create_ats('ats_pico_patch4_28', model_args, pretrained, **kwargs)


@register_model
def test_ats(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """Tiny ATS for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, class token, sampling
    in blocks 1..3 at budget 0.6 (39 points)."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, budget=0.6)
    return _create_ats('test_ats', model_args, pretrained, **kwargs)


@register_model
def test_ats2(pretrained: bool = False, **kwargs: Any) -> ATSViT:
    """Tiny ATS for tests: a register token, LayerScale, qk-norm, position embedding on patches
    only, convolutional stem, average pooling, per-block budgets in blocks 0 and 2."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                      reg_tokens=1, no_embed_class=True, init_values=1e-5, qk_norm=True, stem='conv',
                      global_pool='avg', ats_blocks=(0, 2), budget=(0.5, 0.4))
    return _create_ats('test_ats2', model_args, pretrained, **kwargs)


# ---- an already built timm ViT ----

def apply_ats(model: torch.nn.Module, budget: Union[float, Sequence[float]] = 0.999,
              ats_blocks: Optional[Sequence[int]] = None) -> ATSViT:
    """Turns a built timm ``VisionTransformer`` into an ``ATSViT``, in place.

    The model's class is swapped: its modules, weights and settings stay the very same objects,
    so any timm ViT configuration the blocks support (norms, LayerScale, qk-norm, registers,
    pooling) carries over.

    Args:
        model: A plain timm ``VisionTransformer`` with a class token (not a subclass with its own
            forward), e.g. ``timm.create_model('deit_small_patch16_224', pretrained=True)``.
        budget: Points each ATS block samples, as a fraction of the patches (see ``ATSViT``).
        ats_blocks: Blocks that sample (default ``default_ats_blocks(depth)``: 3..11 of 12).

    Returns:
        The same model, now an ``ATSViT`` (``dynvit.save_model`` needs a model created by name:
        ``dynvit.create_model('ats_...')``).
    """
    return adopt_plain_vit(model, ATSViT, '_init_sampling', ats_blocks=ats_blocks, budget=budget)


register_method('ats', apply_ats)
