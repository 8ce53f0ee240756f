"""ToMe, Token Merging, on timm's VisionTransformer.

Paper: Token Merging: Your ViT But Faster (Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman;
ICLR 2023), arXiv:2210.09461.

Training-free: inside every block, after the attention residual and before the MLP, bipartite
soft matching on the block's attention keys merges ``r`` tokens into their most similar
partners (size-weighted averages, see ``dynvit.layers.token_merging``), so the MLP and every
later block compute fewer tokens. Every image merges the same number of tokens, so a batch
stays one dense tensor and batches equal single images.

``r`` is the released code's ``model.r``: an int for every block, a per-block list (padded
with 0), or, with ``inflect``, the released ``parse_r`` schedule (``inflect=-1``: the paper's
decreasing schedule, 2r down to 0). Each block merges at most half of its unprotected tokens
(the released code clamps r there); a block whose r is 0 runs timm's own forward.

Compatibility with the released code (facebookresearch/ToMe, ``tome/patch/timm.py``), which is
followed where it and the paper differ:

* the similarity is measured on the keys averaged over heads (``head_dim`` wide), the token
  order after a merge is the code's (class token, unmerged A tokens, all B tokens), and
  proportional attention (``prop_attn``, on by default as in ``apply_patch``) adds ``log(size)``
  of the keys only after the first merge;
* the attention stays fused (SDPA, ``log(size)`` as its additive mask) where the released code
  writes it out, which changes the logits by float rounding only;
* only the class token is protected (none without one), so register tokens merge like patches
  as they do in the released code; ``protect_registers=True`` keeps them out of merging. Without
  protected tokens the unmerged A tokens keep the code's similarity order;
* average pooling is timm's plain mean over the output tokens (the released timm patch);
  ``weighted_pool=True`` weighs each output token by its size (the released MAE patch);
* timm's newer block parts run as in timm: LayerScale (``ls1``/``ls2``), qk-norm (its keys are
  the metric), the attention's norm and gate. The released code predates them and skips them,
  so it differs from the dense model even at r = 0 on such ViTs; here r = 0 is the dense model.
"""
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ..families import spec_of
from ..layers import (
    TokenMatch,
    max_merge,
    merge_positions,
    merging_block_forward,
    size_bias,
)
from ..losses import ClassificationLoss, ObjectiveConfig
from ._helpers import is_scalar, run_block, vit_cfg
from ._base import setting
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
from ._apply import register_method

__all__ = ['ToMeAux', 'ToMeVisionTransformer', 'apply_tome', 'parse_r']

RSetting = Union[int, Sequence[int], Tuple[int, float]]


@dataclass
class ToMeAux(TokenAux):
    """What a forward pass merged, for reports and pictures (and, from ``TokenAux``, the MACs,
    the grid and the token weights of the pass).

    Original tokens are indexed prefix tokens first, then the patches row-major (N of them).
    A *stage* is a block that merged; after it a patch counts as kept while the token it started
    as is still in the sequence (a merge keeps the B token, now holding the A tokens that joined
    it, and removes those A tokens): ``kept`` sums to the patch tokens left. Where each patch
    went is ``token_groups`` (per patch) or ``source`` (the released code's layout).

    Attributes:
        tokens_per_block: ``[B, depth]`` tokens entering each block (its attention), prefix included.
        merged_per_block: ``[B, depth]`` tokens each block merged away before its MLP.
        size: ``[B, L]`` original tokens each output token holds (prefix tokens 1).
        token_of: ``[B, P + N]`` the output token each original token ended in.
        unmerged: Per stage ``[B, N]`` float, 1 for the patches still standing as their own token.
        matches: Per block its ``TokenMatch`` (None where it merged nothing).
        merge_blocks: The blocks that merged (one stage each).
        num_patches: N.
        num_prefix: P (class and register tokens).
        num_protected: The leading tokens never merged (the class token, and with
            ``protect_registers`` the registers).
    """
    tokens_per_block: torch.Tensor
    merged_per_block: torch.Tensor
    size: torch.Tensor
    token_of: torch.Tensor
    unmerged: List[torch.Tensor]
    matches: List[Optional[TokenMatch]]
    merge_blocks: Tuple[int, ...]
    num_patches: int
    num_prefix: int
    num_protected: int

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        return self.unmerged

    @property
    def mlp_tokens_per_block(self) -> torch.Tensor:
        """``[B, depth]`` tokens each block's MLP computed (after the merge)."""
        return self.tokens_per_block - self.merged_per_block

    @property
    def token_groups(self) -> torch.Tensor:
        """``[B, N]`` the output token (index into ``features``) each patch ended in: equal values
        are the merged groups (the paper's pictures colour each group)."""
        return self.token_of[:, self.num_prefix:]

    @property
    def source(self) -> torch.Tensor:
        """``[B, L, P + N]`` float, 1 where output token j holds original token i (the released
        code's ``_tome_info['source']``)."""
        L = self.size.shape[1]
        return torch.nn.functional.one_hot(self.token_of, L).transpose(1, 2).to(self.size.dtype)


def parse_r(r: RSetting, depth: int, inflect: float = 0.0) -> Tuple[int, ...]:
    """Tokens each block is asked to merge, as the released code's ``parse_r`` reads ``model.r``.

    Args:
        r: An int (every block, shaped by ``inflect``) or a per-block list (padded with 0).
        depth: Blocks.
        inflect: In [-1, 1], with an int r: the per-block values go linearly from
            ``int(r * (1 - inflect))`` to ``2r`` minus that (0: r everywhere; -1: 2r down to 0).

    Returns:
        ``depth`` non-negative ints (before each block's clamp to half of its tokens).
    """
    if isinstance(r, bool) or not (is_scalar(r) or isinstance(r, (list, torch.Tensor))):
        raise ValueError(f'r must be an int, a per-block list of ints or (r, inflect), got {r!r}')
    if isinstance(inflect, bool) or not is_scalar(inflect) or not -1.0 <= float(inflect) <= 1.0:
        raise ValueError(f'inflect must be a number in [-1, 1], got {inflect!r}')
    if is_scalar(r):
        values = _inflected(_as_int(r), float(inflect), depth)
    else:
        values = [_as_int(v) for v in (r.tolist() if isinstance(r, torch.Tensor) else r)]
        if float(inflect) != 0.0:
            raise ValueError('inflect shapes an int r; a per-block list of r is used as given')
        if len(values) > depth:
            raise ValueError(f'r has {len(values)} values for {depth} blocks')
        values += [0] * (depth - len(values))
    if any(v < 0 for v in values):
        raise ValueError(f'r is a number of tokens to merge and must be >= 0, got {values}')
    return tuple(values)


def _split_r(r: Any, inflect: Optional[float]) -> Tuple[Any, Optional[float]]:
    """The released code's tuple ``r = (r, inflect)`` split in two; other values as given."""
    if not isinstance(r, tuple):
        return r, inflect
    if len(r) != 2:
        raise ValueError(f"a tuple r is the released code's (r, inflect), got {r!r}; give per-block values as a list")
    if inflect is not None:
        raise ValueError('give inflect either in the tuple r=(r, inflect) or as inflect=, not both')
    return r[0], r[1]


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not is_scalar(value) or float(value) != int(value):
        raise ValueError(f'r counts tokens and must be a whole number, got {value!r}')
    return int(value)


def _inflected(r: int, inflect: float, depth: int) -> List[int]:
    """The released schedule: linear from ``int(r * (1 - inflect))`` to ``2r`` minus that, truncated."""
    low = int(r * (1.0 - inflect))
    high = 2 * r - low
    step = (high - low) / (depth - 1) if depth > 1 else 0.0
    return [int(low + step * i) for i in range(depth)]


class ToMeVisionTransformer(TokenSparseViT):
    """timm ``VisionTransformer`` with ToMe token merging in every block.

    Args:
        r: Tokens each block merges away: an int (every block), a per-block list (padded with
            0), or the released code's tuple ``(r, inflect)``.
        inflect: Shape of the schedule of an int ``r``, in [-1, 1] (see ``parse_r``); None: 0
            (constant), or the one in a tuple ``r``.
        prop_attn: Proportional attention: add ``log(size)`` of each key to the attention logits
            (the released ``apply_patch`` default, meant for off-the-shelf models; its authors
            leave it off when training and for off-the-shelf MAE models).
        protect_registers: Keep register tokens out of merging, like the class token (False: the
            released code, which protects only the class token, merges them like patches).
        weighted_pool: Average (max) pooling over the patch tokens weighs each output token by its
            size, as the released MAE patch does (False: timm's plain pooling over the output
            tokens, as the released timm patch).
        **kwargs: ``stem`` ('patch' or 'conv', see ``TokenSparseViT``) and timm's
            ``VisionTransformer`` arguments.
    """
    spec = spec_of('ToMe')
    sparsity_args = ('r', 'inflect', 'prop_attn', 'protect_registers', 'weighted_pool')

    r = setting('r', 'Tokens each block merges away: an int, or one per block.')
    inflect = setting('inflect', 'Shape of the schedule of an int ``r`` (0: constant).')
    prop_attn = setting('prop_attn', 'Whether ``log(size)`` of the keys is added to the attention logits.')
    protect_registers = setting('protect_registers', 'Whether register tokens are kept out of merging like the '
                                                     'class token.')
    weighted_pool = setting('weighted_pool', 'Whether patch pooling weighs each output token by its size.')

    def __init__(
            self,
            *,
            r: RSetting = 8,
            inflect: Optional[float] = None,
            prop_attn: bool = True,
            protect_registers: bool = False,
            weighted_pool: bool = False,
            **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_merging(r=r, inflect=inflect, prop_attn=prop_attn, protect_registers=protect_registers,
                           weighted_pool=weighted_pool)

    def _init_merging(self, **settings: Any) -> None:
        """The settings' state (also what ``apply_tome`` gives a plain timm model)."""
        check_attention_blocks(self, 'merges tokens')  # it needs their keys
        defaults = dict(r=0, inflect=None, prop_attn=True, protect_registers=False, weighted_pool=False)
        self._sparsity = {}
        self._update_sparsity({**defaults, **settings})

    # ---- sparsity settings (changeable on a built model) ----
    @property
    def num_protected(self) -> int:
        """Leading tokens never merged: the class token, and the registers with ``protect_registers``."""
        if self.protect_registers:
            return self.num_prefix_tokens
        return 1 if self.cls_token is not None else 0

    @property
    def r_per_block(self) -> Tuple[int, ...]:
        """Tokens each block is asked to merge (each merges at most half of its unprotected tokens)."""
        return self._r_per_block

    def _checked_sparsity(self, current: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        """A per-block list (or the tuple ``(r, inflect)``) replaces ``inflect``; a new int ``r``
        keeps the current ``inflect`` unless it is given."""
        r, inflect = _split_r(given.get('r'), given.get('inflect'))
        new_r = current.get('r', 0) if r is None else r
        if inflect is None:
            inflect = current.get('inflect', 0.0) if is_scalar(new_r) else 0.0
        per_block = parse_r(new_r, len(self.blocks), inflect)
        switches = {}
        for name in ('prop_attn', 'protect_registers', 'weighted_pool'):
            value = given.get(name, current.get(name))
            if not isinstance(value, bool):
                raise ValueError(f'{name} must be True or False, got {value!r}')
            switches[name] = value
        protected = self.num_prefix_tokens if switches['protect_registers'] else int(self.cls_token is not None)
        limit = max_merge(self.patch_embed.num_patches + self.num_prefix_tokens, protected)
        if max(per_block, default=0) > limit:
            raise ValueError(f'r={max(per_block)} is too large: a block merges at most half of its unprotected '
                             f'tokens, {limit} of the {self.patch_embed.num_patches} patches; use r <= {limit}')
        return dict(r=int(new_r) if is_scalar(new_r) else list(per_block), inflect=float(inflect), **switches)

    def _sparsity_changed(self) -> None:
        self._r_per_block = parse_r(self.r, len(self.blocks), self.inflect)

    def dense_settings(self) -> Dict[str, Any]:
        return dict(r=0)

    @property
    def sparsity_level(self) -> Tuple[float, ...]:
        """``1 - r / N`` (N: the patches at the configured image size), one value while every
        block merges the same r, else one per block: 1.0 is dense, so a training schedule from
        1.0 ramps merging in."""
        n = self.patch_embed.num_patches
        values = self.r_per_block if len(set(self.r_per_block)) > 1 else self.r_per_block[:1]
        return tuple(1.0 - v / n for v in values)

    def _knob_of_level(self, level: Sequence[float]) -> Union[int, List[int]]:
        """``r = round((1 - level) * N)``: one int, or one per block."""
        n = self.patch_embed.num_patches
        r = [int(round((1.0 - float(v)) * n)) for v in level]
        return r[0] if len(r) == 1 else r

    def set_sparsity_level(self, level: Sequence[float]) -> 'ToMeVisionTransformer':
        """Sets ``r`` at ``level`` (one value for every block, the schedule flat, or one per block)."""
        r = self._knob_of_level(level)
        return self.set_sparsity(r=r, inflect=0.0 if isinstance(r, int) else None)

    def training_objective(self, config: ObjectiveConfig) -> ClassificationLoss:
        """Cross-entropy and logit distillation: merging has nothing of its own to train."""
        return ClassificationLoss(base_criterion=config.criterion(), **config.distillation())

    # ---- forward ----
    def _forward_tokens(self, images: torch.Tensor, want_aux: bool) -> Tuple[torch.Tensor, Optional[ToMeAux]]:
        """Embeds and runs the blocks, merging tokens in each.

        Args:
            images: ``[B, C, H, W]``.
            want_aux: Also make the ``ToMeAux`` of this pass (made anyway when the pooling
                weighs tokens by size).

        Returns:
            Tokens ``[B, P + N - merged, C]`` after the final norm (protected tokens first, then
            the released code's order), and the aux.
        """
        x = self._embed(images)
        B, T, _ = x.shape
        P, protected = self.num_prefix_tokens, self.num_protected
        weigh = self.weighted_pool and self.global_pool not in ('token', '')  # pooling reads the sizes
        track = want_aux or weigh
        size = None  # [B, T, 1] original tokens per token, None until the first merge
        token_of = ident = None
        if track:
            token_of = torch.arange(T, device=x.device).expand(B, T)  # [B, P + N] current position
            ident = token_of  # [B, T] the original token each current token started as
        tokens, merged, matches, unmerged = [], [], [], []
        for i, block in enumerate(self.blocks):
            r = min(self.r_per_block[i], max_merge(x.shape[1], protected))
            tokens.append(x.shape[1])
            merged.append(r)
            if r == 0:
                x = self._block(block, x, size_bias(size, x.dtype) if self.prop_attn else None)
                matches.append(None)
                continue
            x, size, match = run_block(self, merging_block_forward, block, x, size, r, protected, self.prop_attn)
            matches.append(match)
            if track:
                token_of = merge_positions(match).gather(1, token_of)
                ident = ident.gather(1, match.order)
                unmerged.append(x.new_zeros(B, T).scatter_(1, ident, 1.0)[:, P:])
        x = self.norm(x)
        if not track:
            return x, None

        weights = x.new_ones(B, x.shape[1]) if size is None else size[..., 0]
        aux = ToMeAux(
            tokens_per_block=self._per_image(tokens, B, x.device),
            merged_per_block=self._per_image(merged, B, x.device),
            size=weights,
            token_of=token_of,
            unmerged=unmerged,
            matches=matches,
            merge_blocks=tuple(i for i, m in enumerate(matches) if m is not None),
            num_patches=T - P,
            num_prefix=P,
            num_protected=protected,
            features=x,
            token_mask=weights if weigh else None,
            grid=self._patch_grid(images),
        )
        return x, aux

    # ---- MACs ----
    def _selection_macs(self, aux: ToMeAux) -> torch.Tensor:
        """The similarity products of the matching: ``|A| x |B|`` cosines of ``head_dim``-wide keys."""
        macs = torch.zeros_like(aux.tokens_per_block[:, 0])
        for i in aux.merge_blocks:
            t = aux.tokens_per_block[:, i]
            macs = macs + (t + 1) // 2 * (t // 2) * self.blocks[i].attn.head_dim
        return macs


def apply_tome(model: nn.Module, r: RSetting = 8, **settings: Any) -> ToMeVisionTransformer:
    """Turns a built timm ``VisionTransformer`` into a ``ToMeVisionTransformer``, in place.

    The model's class is swapped (as the released ``apply_patch`` does): its modules, weights and
    settings stay the very same objects, nothing is copied or reloaded, and any timm ViT
    configuration the blocks support (norms, LayerScale, qk-norm, registers, pooling) carries
    over, which rebuilding from constructor arguments could not guarantee.

    Args:
        model: A plain timm ``VisionTransformer`` (not a subclass with its own forward).
        r: Tokens each block merges away (see ``ToMeVisionTransformer``).
        **settings: ``inflect``, ``prop_attn``, ``protect_registers``, ``weighted_pool`` (see
            ``ToMeVisionTransformer``).

    Returns:
        The same model, now a ``ToMeVisionTransformer`` (``dynvit.save_model`` needs a model
        created by name: ``dynvit.create_model('tome_...')``).
    """
    return adopt_plain_vit(model, ToMeVisionTransformer, '_init_merging', r=r, **settings)


register_method('tome', apply_tome)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ToMeVisionTransformer) -> Dict[str, torch.Tensor]:
    """Maps a dense timm/DeiT ViT checkpoint (ToMe adds no parameters), or the backbone of
    another token family's, onto ``model``; key layouts that fit none raise a ValueError naming the keys."""
    return token_vit_checkpoint_filter(state_dict, model)


# _create_*(variant, model_args, pretrained, **kwargs): the variant built with its family's checkpoint filter
_create_tome = partial(build_token_vit, ToMeVisionTransformer, checkpoint_filter_fn)


_cfg = partial(vit_cfg, spec=ToMeVisionTransformer.spec, classifier='head')


default_cfgs = generate_default_cfgs({
    **deit_cfgs('tome', _cfg),  # timm's DeiT ImageNet-1k weights, merged off the shelf (ToMe needs no training)
    **pico_cfgs('tome_pico_patch4_28', _cfg),  # the zoo's files, offline
    **tiny_test_cfgs(('test_tome', 'test_tome2'), _cfg),
})


def _tome_deit_args(embed_dim: int, num_heads: int) -> Dict[str, Any]:
    """DeiT geometry merging 13 tokens per block (197 tokens into block 0, 41 out of block 11)."""
    return dict(patch_size=16, embed_dim=embed_dim, depth=12, num_heads=num_heads, r=13)


@register_model
def tome_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """ToMe on DeiT-Tiny (192 wide, 12 blocks), r = 13."""
    model_args = _tome_deit_args(embed_dim=192, num_heads=3)
    return _create_tome('tome_tiny_patch16_224', model_args, pretrained, **kwargs)


@register_model
def tome_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """ToMe on DeiT-Small (384 wide, 12 blocks), r = 13."""
    model_args = _tome_deit_args(embed_dim=384, num_heads=6)
    return _create_tome('tome_small_patch16_224', model_args, pretrained, **kwargs)


@register_model
def tome_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """ToMe on DeiT-Base (768 wide, 12 blocks), r = 13."""
    model_args = _tome_deit_args(embed_dim=768, num_heads=12)
    return _create_tome('tome_base_patch16_224', model_args, pretrained, **kwargs)


@register_model
def tome_pico_patch4_28(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """ToMe on the zoo's 28-px ViT (patch 4: 49 patches; 96 wide, 6 blocks, 3 heads, convolutional
    stem). By default r = 4 (49, 45, ..., 29 patches into the blocks)."""
    model_args = pico_28_args(r=4)
    return _create_tome('tome_pico_patch4_28', model_args, pretrained, **kwargs)


@register_model
def test_tome(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """Tiny ToMe for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, class token, r = 8
    (65, 57, 49, 41 tokens into the blocks)."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, r=8)
    return _create_tome('test_tome', model_args, pretrained, **kwargs)


@register_model
def test_tome2(pretrained: bool = False, **kwargs: Any) -> ToMeVisionTransformer:
    """Tiny ToMe for tests: a register token, size-weighted average pooling, LayerScale, qk-norm,
    convolutional stem, a decreasing schedule (9, 7, 5, 3 merged) without proportional attention."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        reg_tokens=1, global_pool='avg', init_values=1e-5, qk_norm=True, stem='conv',
        r=6, inflect=-0.5, prop_attn=False)
    return _create_tome('test_tome2', model_args, pretrained, **kwargs)
