"""EViT on timm's VisionTransformer.

Paper: Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations (Liang, Ge, Tong, Song, Wang, Xie; ICLR 2022), arXiv:2202.07800.

No learned predictor: inside each block of ``drop_loc``, after the attention residual and
before the MLP, the non-class tokens are ranked by the attention the class token paid them in
that block (mean over heads); the top ``ceil(keep_ratio * n)`` of the n current ones stay and
the others are fused into one token, their sum weighted by that attention
(``dynvit.layers.token_fusion``). The fused token then is an ordinary token: later pruning
blocks count it in n, rank it and keep it or fuse it again. The sequence really shrinks, by
the same count for every image, so a batch computes what its images would alone.

Compatibility with the released code (youweiliang/evit, ``evit.py``), whose eval path this
reproduces: kept tokens follow the class token in descending attention order and the fused
token comes last (the order changes no output, only the float summation order); the count is
``ceil`` of the current non-class tokens, a fused token included; the score is the class row of
the block's softmax attention over all keys (prefix tokens included, not renormalised over the
patches); the fused token's weights are those scores, not renormalised. Differences: the
attention stays fused (SDPA) and only the class row is computed apart, so a pass differs from
the released code by float rounding (~1e-7), which can swap two tokens whose scores are closer
than that at the keep boundary; with attention dropout in training the released code ranks by
the dropped-out attention, this by the attention before dropout. ``fuse_token=False`` drops
the inattentive tokens instead (the released code's default, the paper's ablation).

Training: the keep rate warms up from 1 through the trainer's sparsity schedule
(``--sparsity-start 1.0 --sparsity-warmup-epochs N``; the released code's is a cosine from 1,
this one linear), the loss is cross-entropy with optional distillation (``ClassificationLoss``).
``keep_ratio``, ``drop_loc`` and ``fuse_token`` are plain attributes: change them on a built
model. ``evit_from_vit`` turns a built timm ``VisionTransformer`` into an EViT with its weights.
"""
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerScale, PatchDropout
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from ..families import spec_of
from ..layers import ConvPatchEmbed, block_forward_keep_attentive
from ..losses import ClassificationLoss, ObjectiveConfig
from ._apply import register_method
from ..runtime.macs import vit_macs
from ._helpers import run_block, vit_cfg
from ._base import DynamicModel, setting
from ._staged import StagedTokenViT
from ._token_vit import (
    TokenAux,
    build_token_vit,
    check_attention_blocks,
    deit_cfgs,
    pico_28_args,
    pico_cfgs,
    tiny_test_cfgs,
    token_vit_checkpoint_filter,
)
from ._tags import register_tag_args

__all__ = ['EViT', 'EViTAux', 'evit_from_vit', 'default_drop_loc']


@dataclass
class EViTAux(TokenAux):
    """What a forward pass kept and fused, for reports and pictures (and, from ``TokenAux``, the
    MACs, the grid and the keep ratios of the pass).

    Stage s is the pruning block ``drop_loc[s]``; positions refer to the original patch grid
    (row-major, N patches); "tokens" are the non-prefix tokens of the sequence at that point.

    Attributes:
        token_of: Per stage ``[B, N]`` long: the position, among the tokens after the stage, of
            the token that holds each patch (itself or a fused token), -1 for a dropped patch.
        token_index: Per stage ``[B, n']`` long: the patch each token after the stage is, in
            sequence order, -1 for a fused token.
        keep_index: Per stage ``[B, k]`` long: the kept tokens' indices into the stage's input
            tokens, in their new (descending score) order.
        scores: Per stage ``[B, n]`` float32: the class attention of the stage's input tokens, in
            their order then (zeros where the stage kept all and ranked nothing).
        tokens_per_block: ``[B, depth]`` tokens into each block's attention (prefix included).
        mlp_tokens: ``[B, depth]`` tokens into each block's MLP (fewer in a pruning block).
        cls_attention_keys: ``[B, depth]`` keys of the class-attention row computed apart in each
            block (0 where the block did not rank).
        fused_inputs: ``[B, depth]`` tokens fused into one in each block (the n - k not kept; 0: none).
        num_patches: N.
    """
    token_of: List[torch.Tensor]
    token_index: List[torch.Tensor]
    keep_index: List[torch.Tensor]
    scores: List[torch.Tensor]
    tokens_per_block: torch.Tensor
    mlp_tokens: torch.Tensor
    cls_attention_keys: torch.Tensor
    fused_inputs: torch.Tensor
    num_patches: int

    @property
    def kept_patches(self) -> List[torch.Tensor]:
        """Per stage ``[B, N]`` float: 1 for the patches still a token of their own after the stage."""
        return [((owner >= 0) & (index.gather(1, owner.clamp_min(0)) >= 0)).float()
                for owner, index in zip(self.token_of, self.token_index)]

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        """``kept_patches``: the patches a stage kept as themselves (``kept``, ``kept_masks``)."""
        return self.kept_patches

    @property
    def fused_masks(self) -> List[torch.Tensor]:
        """Per stage ``[B, N]`` bool: the patches inside a fused token after the stage (the others
        not kept as themselves are dropped: none with ``fuse_token``, all without)."""
        return [(owner >= 0) & ~kept.bool() for owner, kept in zip(self.token_of, self.kept_patches)]


def default_drop_loc(depth: int) -> Tuple[int, ...]:
    """The paper's pruning blocks, 4th, 7th and 10th of 12 (indices 3, 6, 9), scaled to ``depth``."""
    return tuple(sorted({depth // 4, depth // 2, 3 * depth // 4} - {0})) or (0,)


def _track_stage(index: torch.Tensor, owner: torch.Tensor, keep: torch.Tensor, n: int,
                 fuse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where the patches are after a stage kept ``keep`` ``[B, k]`` of its n tokens.

    Args:
        index: ``[B, n]`` patch of each input token (-1: a fused token).
        owner: ``[B, N]`` input token holding each patch (-1: dropped).
        keep: Kept token indices, in their new order.
        n: Input tokens.
        fuse: Whether the others were fused into a last token (else dropped).

    Returns:
        The new ``index`` ``[B, k (+ 1)]`` and ``owner`` ``[B, N]``.
    """
    B, k = keep.shape
    new_index = index.gather(1, keep)
    position = keep.new_full((B, n), k if fuse else -1)  # input token -> output token
    position.scatter_(1, keep, torch.arange(k, device=keep.device).expand(B, k))
    if fuse:
        new_index = torch.cat([new_index, new_index.new_full((B, 1), -1)], dim=1)
    owner = torch.where(owner >= 0, position.gather(1, owner.clamp_min(0)), owner)
    return new_index, owner


class _Trace:
    """What a pass records for its aux: the tokens each block computed, and per stage where the
    patches went (the latter only when the aux is wanted)."""

    def __init__(self, x: torch.Tensor, num_prefix: int, want_aux: bool) -> None:
        B, L, _ = x.shape
        self.want_aux = want_aux
        self.blocks: Dict[str, List[int]] = {'attn': [], 'mlp': [], 'row': [], 'fused': []}  # same for every image
        self.stages: Dict[str, List[torch.Tensor]] = {'token_of': [], 'token_index': [], 'keep_index': [], 'scores': []}
        self.index = torch.arange(L - num_prefix, device=x.device).expand(B, -1) if want_aux else None  # [B, n]
        self.owner = self.index  # [B, N]: the current token holding each patch

    def block(self, tokens_in: int, tokens_out: int, ranked: int, fused: int) -> None:
        """A block ran attention on ``tokens_in``, its MLP on ``tokens_out``, a class row over
        ``ranked`` keys and a fused token of ``fused`` tokens (0: none)."""
        for key, value in zip(('attn', 'mlp', 'row', 'fused'), (tokens_in, tokens_out, ranked, fused)):
            self.blocks[key].append(value)

    def stage(self, keep: Optional[torch.Tensor], score: Optional[torch.Tensor], n: int, fuse: bool) -> None:
        """A pruning block kept ``keep`` ``[B, k]`` of its n tokens, ranked by ``score`` ``[B, n]``
        (both None: it kept all)."""
        if not self.want_aux:
            return
        if keep is None:
            B = self.index.shape[0]
            keep = torch.arange(n, device=self.index.device).expand(B, n)
            score = torch.zeros(B, n, device=self.index.device)
        else:
            self.index, self.owner = _track_stage(self.index, self.owner, keep, n, fuse)
        for key, value in zip(('token_of', 'token_index', 'keep_index', 'scores'),
                              (self.owner, self.index, keep, score.detach())):
            self.stages[key].append(value)

    def aux(self, **kwargs: Any) -> 'EViTAux':
        """The ``EViTAux`` of the pass (``kwargs``: its other fields)."""
        B, device = self.owner.shape[0], self.owner.device
        per_block = {key: DynamicModel._per_image(values, B, device) for key, values in self.blocks.items()}
        return EViTAux(**self.stages, tokens_per_block=per_block['attn'], mlp_tokens=per_block['mlp'],
                       cls_attention_keys=per_block['row'], fused_inputs=per_block['fused'], **kwargs)


class EViT(StagedTokenViT):
    """timm ``VisionTransformer`` with EViT token reorganisation.

    Args:
        drop_loc: Blocks that keep the attentive tokens (between their attention and MLP);
            default ``default_drop_loc(depth)``, (3, 6, 9) for 12 blocks.
        keep_ratio: Fraction of its current non-class tokens each of those blocks keeps
            (``ceil``), one float for all or one per block of ``drop_loc``.
        fuse_token: Fuse the inattentive tokens into one (the paper's EViT); False drops them.
        **kwargs: ``stem`` ('patch' or 'conv', see ``TokenSparseViT``) and timm's
            ``VisionTransformer`` arguments (it needs a class token).
    """
    spec = spec_of('EViT')
    sparsity_args = ('drop_loc', 'keep_ratio', 'fuse_token')
    class_token_use = 'ranks tokens by the attention of the class token'
    loc_arg = 'drop_loc'
    stages_what = 'pruning blocks (drop_loc)'
    ratio_meaning = 'the fraction of its tokens a pruning block keeps'

    drop_loc = setting('drop_loc', 'Blocks that keep the attentive tokens.')
    fuse_token = setting('fuse_token', 'Whether the inattentive tokens are fused into one (else dropped).')

    def __init__(
            self,
            *,
            drop_loc: Optional[Sequence[int]] = None,
            keep_ratio: Union[float, Sequence[float]] = 0.7,
            fuse_token: bool = True,
            **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_attention_blocks(self, 'reads the class attention')
        if keep_ratio is None or fuse_token is None:
            raise ValueError('keep_ratio and fuse_token cannot be None')
        self._update_sparsity(dict(drop_loc=default_drop_loc(len(self.blocks)) if drop_loc is None else drop_loc,
                                   keep_ratio=keep_ratio, fuse_token=fuse_token))

    # ---- sparsity settings (changeable on a built model) ----
    def _checked_family_settings(self, settings: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        fuse = given.get('fuse_token', settings.get('fuse_token'))
        if not isinstance(fuse, bool):
            raise ValueError(f'fuse_token must be True or False, got {fuse!r}')
        return {**settings, 'fuse_token': fuse}

    def num_keep(self, stage: int, num_tokens: int) -> int:
        """Tokens kept by pruning block ``stage`` of its ``num_tokens`` non-prefix tokens:
        ``ceil(keep_ratio * num_tokens)``, as the released code counts (a fused token included)."""
        return math.ceil(self.keep_ratio[stage] * num_tokens)

    def training_objective(self, config: ObjectiveConfig) -> ClassificationLoss:
        """Cross-entropy and logit distillation from the dense teacher (when the trainer gives one)."""
        return ClassificationLoss(base_criterion=config.criterion(), **config.distillation())

    # ---- forward ----
    def _forward_tokens(self, images: torch.Tensor, want_aux: bool) -> Tuple[torch.Tensor, Optional[EViTAux]]:
        """Embeds and runs the blocks, keeping the attentive tokens in the ``drop_loc`` blocks.

        Args:
            images: ``[B, C, H, W]``.
            want_aux: Also make the ``EViTAux`` of this pass (else None).

        Returns:
            Tokens ``[B, P + n, C]`` after the final norm (prefix tokens, then the kept tokens in
            descending score order, a fused token last), and the aux.
        """
        x = self._embed(images)
        P = self.num_prefix_tokens
        N = x.shape[1] - P
        trace = _Trace(x, P, want_aux)
        for i, block in enumerate(self.blocks):
            s = self.stage_of_block(i)
            n = x.shape[1] - P
            k = n if s is None else min(n, self.num_keep(s, n))
            tokens_in = x.shape[1]
            if k < n:
                x, keep, score = run_block(self, block_forward_keep_attentive, block, x, P, k, self.fuse_token)
            else:
                x, keep, score = self._block(block, x), None, None
            ranked = keep is not None
            trace.block(tokens_in, x.shape[1], P + n if ranked else 0, n - k if ranked and self.fuse_token else 0)
            if s is not None:
                trace.stage(keep, score, n, self.fuse_token)
        x = self.norm(x)
        if not want_aux:
            return x, None
        return x, trace.aux(num_patches=N, features=x, grid=self._patch_grid(images), keep_ratio=self.keep_ratio)

    # ---- MACs ----
    def _spent_macs(self, aux: EViTAux) -> torch.Tensor:
        """Blocks on the tokens their attention and their MLP computed, the patch embedding, the
        head and the selection."""
        return vit_macs(self, aux.tokens_per_block, aux.num_patches, aux.mlp_tokens) + self._selection_macs(aux)

    def _selection_macs(self, aux: EViTAux) -> torch.Tensor:
        """The class-attention rows (q_cls K^T) and the fused tokens' weighted sums."""
        macs = aux.fused_inputs.sum(dim=1) * self.embed_dim
        for i, block in enumerate(self.blocks):
            macs = macs + aux.cls_attention_keys[:, i] * (block.attn.num_heads * block.attn.head_dim)
        return macs


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EViT) -> Dict[str, torch.Tensor]:
    """Maps an EViT checkpoint (ours or the released code's, whose keys are timm's), a dense
    timm/DeiT ViT checkpoint or another family's (its backbone) onto ``model``.

    Key layouts that fit none of these raise a ValueError naming the keys.
    """
    return token_vit_checkpoint_filter(state_dict, model)


# _create_*(variant, model_args, pretrained, **kwargs): the variant built with its family's checkpoint filter
_create_evit = partial(build_token_vit, EViT, checkpoint_filter_fn)


_cfg = partial(vit_cfg, spec=EViT.spec, classifier='head')


# The released DeiT-S checkpoints (README of youweiliang/evit; Google Drive links as given there, in their
# direct-download form): keep rate 0.9 ... 0.5 in blocks 3, 6, 9, with and without token fusion.
_GDRIVE = 'https://drive.google.com/uc?export=download&id='
_OFFICIAL = {  # the paper's EViT/0.7 (the variant's own settings) first: the architecture's default tag
    (True, 0.7): '1FfvdEBss9f8gexjqEY8vOSUQe_8qwYuL',
    (True, 0.9): '1CmROmlLV-7nyYY-Bhph8_5ut3wFwqvny',
    (True, 0.8): '1BTJyIe0zVK3zYXz3BzIlSC4YZCnZu7cJ',
    (True, 0.6): '1D1m067jDbyG0g2UjyBMaJ4NTT2Ad8vrv',
    (True, 0.5): '1-nyxAlRWjD2icbgj3Y3YWcCmYj9sTgfD',
    (False, 0.9): '1tSaPLged8ED2RTiN5ttSmeTNIw1aNNwV',
    (False, 0.8): '1zdFbHk-gOw_Wiid5_Z8NFcBa1HMI-JF-',
    (False, 0.7): '1VCZGphW34rFWZDXOoF7XO4EJfRLZ-YB8',
    (False, 0.6): '1okYcKryyD6FFPG9v5r40R28SRNfVZ5X0',
    (False, 0.5): '1qsPeLN5ytLO8pM7lUuj5bi6pyMhjiSJO',
}


def _official_tag(fuse: bool, keep: float) -> str:
    return f'evit_small_patch16_224.official_{"fuse" if fuse else "drop"}_kr{round(keep * 10):02d}_in1k'


register_tag_args({_official_tag(fuse, keep): dict(drop_loc=(3, 6, 9), keep_ratio=keep, fuse_token=fuse)
                   for fuse, keep in _OFFICIAL})

default_cfgs = generate_default_cfgs({
    **{_official_tag(fuse, keep): _cfg(
        _GDRIVE + file_id, license='apache-2.0', origin_url='https://github.com/youweiliang/evit',
        notes=(f'official EViT DeiT-S checkpoint (ckpt["model"]); keep rate {keep} in blocks 3, 6, 9, '
               f'{"fused" if fuse else "dropped"} inattentive tokens',))
       for (fuse, keep), file_id in _OFFICIAL.items()},
    # timm's DeiT ImageNet-1k weights: EViT needs no new parameters, so these run as they are (at a
    # modest loss) and EViT fine-tunes from them.
    **deit_cfgs('evit', _cfg),
    **tiny_test_cfgs(('test_evit', 'test_evit2'), _cfg),
    **pico_cfgs('evit_pico_patch4_28', _cfg),  # trained by the zoo (weights/)
})


def _evit_deit_args(embed_dim: int, num_heads: int) -> Dict[str, Any]:
    """DeiT geometry with the paper's schedule: keep rate 0.7 with token fusion in blocks 3, 6, 9 (the
    default ``drop_loc``, ``default_drop_loc(depth)``, so another ``depth`` gets its scaled blocks)."""
    return dict(patch_size=16, embed_dim=embed_dim, depth=12, num_heads=num_heads, keep_ratio=0.7, fuse_token=True)


@register_model
def evit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-Tiny (192 wide, 12 blocks), keep rate 0.7 in blocks 3, 6, 9."""
    model_args = _evit_deit_args(embed_dim=192, num_heads=3)
    return _create_evit('evit_tiny_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-Small (384 wide, 12 blocks), keep rate 0.7 in blocks 3, 6, 9."""
    model_args = _evit_deit_args(embed_dim=384, num_heads=6)
    return _create_evit('evit_small_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-Base (768 wide, 12 blocks), keep rate 0.7 in blocks 3, 6, 9."""
    model_args = _evit_deit_args(embed_dim=768, num_heads=12)
    return _create_evit('evit_base_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evit_pico_patch4_28(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on the zoo's 28-px ViT (patch 4: 49 patches; 96 wide, 6 blocks, 3 heads, convolutional
    stem). By default keep rate 0.7 with token fusion in blocks 1, 3, 5."""
    model_args = pico_28_args(drop_loc=(1, 3, 5), keep_ratio=0.7, fuse_token=True)
    return _create_evit('evit_pico_patch4_28', model_args, pretrained, **kwargs)


@register_model
def test_evit(pretrained: bool = False, **kwargs: Any) -> EViT:
    """Tiny EViT for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, class token, token
    fusion in blocks 1 and 2 at keep rate 0.7."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                      drop_loc=(1, 2), keep_ratio=0.7)
    return _create_evit('test_evit', model_args, pretrained, **kwargs)


@register_model
def test_evit2(pretrained: bool = False, **kwargs: Any) -> EViT:
    """Tiny EViT for tests: a register token, LayerScale, qk-norm, position embedding on patches
    only, convolutional stem, average pooling, inattentive tokens dropped (no fusion) in blocks 0
    and 2 at per-block keep rates."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                      reg_tokens=1, no_embed_class=True, init_values=1e-5, qk_norm=True, stem='conv',
                      global_pool='avg', drop_loc=(0, 2), keep_ratio=(0.6, 0.5), fuse_token=False)
    return _create_evit('test_evit2', model_args, pretrained, **kwargs)


# ---- an already built timm ViT ----

# what evit_from_vit takes from the source model's pretrained cfg: its data config and where its weights came from
_SOURCE_CFG_KEYS = ('input_size', 'min_input_size', 'test_input_size', 'fixed_input_size', 'interpolation',
                    'crop_pct', 'test_crop_pct', 'crop_mode', 'mean', 'std', 'num_classes', 'label_names',
                    'label_descriptions', 'url', 'hf_hub_id', 'hf_hub_filename', 'file', 'license', 'origin_url')


def _vit_args(model: VisionTransformer) -> Dict[str, Any]:
    """The ``VisionTransformer`` arguments that rebuild ``model``'s modules (their weights aside)."""
    block, embed = model.blocks[0], model.patch_embed
    attn = block.attn
    head_drop = model.head_drop.p if isinstance(model.head_drop, nn.Dropout) else 0.0
    drop_path = getattr(model.blocks[-1].drop_path1, 'drop_prob', 0.0)
    return dict(
        img_size=tuple(embed.img_size), patch_size=tuple(embed.patch_size), in_chans=model.in_chans,
        num_classes=model.num_classes, global_pool=model.global_pool, embed_dim=model.embed_dim,
        depth=len(model.blocks), num_heads=attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=attn.qkv.bias is not None, qk_norm=not isinstance(attn.q_norm, nn.Identity),
        scale_attn_norm=not isinstance(attn.norm, nn.Identity),
        scale_mlp_norm=not isinstance(getattr(block.mlp, 'norm', nn.Identity()), nn.Identity),
        proj_bias=attn.proj.bias is not None, init_values=1e-5 if isinstance(block.ls1, LayerScale) else None,
        class_token=model.has_class_token, pos_embed='learn' if model.pos_embed is not None else 'none',
        no_embed_class=model.no_embed_class, reg_tokens=model.num_reg_tokens,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(model.fc_norm, nn.Identity), pool_include_prefix=model.pool_include_prefix,
        dynamic_img_size=model.dynamic_img_size, dynamic_img_pad=getattr(embed, 'dynamic_img_pad', False),
        drop_rate=head_drop, pos_drop_rate=model.pos_drop.p if isinstance(model.pos_drop, nn.Dropout) else 0.0,
        patch_drop_rate=model.patch_drop.prob if isinstance(model.patch_drop, PatchDropout) else 0.0,
        proj_drop_rate=attn.proj_drop.p, attn_drop_rate=attn.attn_drop.p, drop_path_rate=float(drop_path),
        **({'stem': 'conv'} if isinstance(embed, ConvPatchEmbed) else {}),
    )


def _refusal(model: nn.Module) -> Optional[str]:
    """Why ``evit_from_vit`` cannot take ``model`` (None when it can)."""
    name = type(model).__name__
    if isinstance(model, DynamicModel):
        return (f'{name} is already a dynvit {model.family} model; save it (dynvit.save_model) and build the EViT '
                f'from the file: dynvit.create_model("evit_tiny_patch16_224", pretrained=True, '
                f'pretrained_cfg_overlay=dict(file=PATH))')
    if not isinstance(model, VisionTransformer):
        return f'evit_from_vit needs a timm VisionTransformer, got {name}'
    overridden = [m for m in ('forward', 'forward_features', 'forward_head', '_pos_embed')
                  if getattr(type(model), m) is not getattr(VisionTransformer, m)]
    if overridden:
        return (f'{name} overrides VisionTransformer.{overridden[0]}; evit_from_vit takes plain timm '
                f'VisionTransformer models')
    if not model.has_class_token:
        return f'EViT ranks tokens by the attention of the class token, and this {name} has none'
    return None


def evit_from_vit(
        model: VisionTransformer,
        keep_ratio: Union[float, Sequence[float]] = 0.7,
        drop_loc: Optional[Sequence[int]] = None,
        fuse_token: bool = True,
) -> EViT:
    """EViT on an already built timm ``VisionTransformer``, with its weights (copied; ``model`` is
    left as it is) and its data config.

    Args:
        model: A plain timm ``VisionTransformer`` with a class token (e.g.
            ``timm.create_model('deit_small_patch16_224', pretrained=True)``).
        keep_ratio: Fraction of its non-class tokens each pruning block keeps (one float or one
            per block of ``drop_loc``).
        drop_loc: Pruning blocks (default ``default_drop_loc(depth)``: 3, 6, 9 of 12).
        fuse_token: Fuse the inattentive tokens into one (else drop them).

    Returns:
        The EViT, on the device and in the dtype and train/eval mode of ``model``; it saves and
        loads like any dynvit model (``dynvit.save_model``).

    Raises:
        ValueError: When ``model`` is not a plain timm ViT with a class token, or its modules are
            not what ``VisionTransformer``'s arguments build (another norm or activation).
    """
    why = _refusal(model)
    if why is not None:
        raise ValueError(why)
    args = _vit_args(model)
    arch = {192: 'evit_tiny_patch16_224', 384: 'evit_small_patch16_224'}.get(model.embed_dim, 'evit_base_patch16_224')
    drop_loc = default_drop_loc(args['depth']) if drop_loc is None else drop_loc
    evit = _create_evit(arch, {}, **args, keep_ratio=keep_ratio, drop_loc=drop_loc, fuse_token=fuse_token)
    for part in ('patch_embed', 'pos_drop', 'patch_drop', 'norm_pre', 'blocks', 'norm', 'fc_norm', 'head_drop', 'head'):
        if repr(getattr(evit, part)) != repr(getattr(model, part)):
            raise ValueError(f'cannot rebuild this {type(model).__name__} as EViT: its {part} differs from what the '
                             f'VisionTransformer arguments build (another norm, activation or layer)')
    weights = model.state_dict()
    ref = next(iter(weights.values()), None)
    if ref is not None:
        evit.to(device=ref.device, dtype=ref.dtype)
    evit.load_state_dict(weights, strict=True)
    for ours, theirs in zip(evit.blocks, model.blocks):
        ours.attn.fused_attn = theirs.attn.fused_attn
    source = getattr(model, 'pretrained_cfg', None) or {}
    cfg = {k: v for k, v in evit.pretrained_cfg.items() if k not in _SOURCE_CFG_KEYS + ('tag', 'notes')}
    cfg.update({k: source[k] for k in _SOURCE_CFG_KEYS if k in source}, num_classes=model.num_classes)
    evit.pretrained_cfg = evit.default_cfg = cfg
    evit.set_grad_checkpointing(model.grad_checkpointing)
    return evit.train(model.training)


register_method('evit', evit_from_vit)
