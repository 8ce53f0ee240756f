"""What the token-reducing ViT families share: a timm ``VisionTransformer`` whose blocks compute
fewer tokens per image, counting its MACs from the tokens each block saw, pooling only the tokens
that are left, and refusing what a reduced token set cannot do (attention pooling, timm's
``forward_intermediates`` on the full grid, external attention masks).

A family subclasses ``TokenSparseViT`` (or ``StagedTokenViT``, ``_staged.py``, when it selects at
a few stages by keep ratios) and writes its token pass ``_forward_tokens(x, want_aux, **kwargs) ->
(features, aux or None)``; its aux subclasses ``TokenAux``.
"""
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn as vit_checkpoint_filter_fn

from ..layers import is_packable, is_timm_attention
from ..runtime.macs import dense_vit_macs, vit_macs
from ._base import DynamicAux, DynamicModel
from ._helpers import (
    build_dynamic_model,
    check_state_dict,
    embed_tokens,
    first_conv_keys,
    run_block,
    vit_embed_layer,
    with_stem_cfg,
)
from ._tags import with_tag_args, zoo_cfgs

__all__ = ['TokenAux', 'TokenSparseViT', 'adopt_plain_vit', 'build_token_vit', 'check_attention_blocks', 'deit_cfgs',
           'pico_28_args', 'pico_cfgs', 'tiny_test_cfgs', 'token_vit_checkpoint_filter']


@dataclass(kw_only=True)
class TokenAux(DynamicAux):
    """The aux of a token-sparse ViT. Positions refer to the original patch grid (row-major, N patches).

    Subclasses provide ``num_patches`` (N), ``tokens_per_block`` (``[B, depth]`` tokens each block
    computed, prefix tokens included) and ``stage_weights`` (per stage ``[B, N]``, 1 for the
    patches the stage kept).

    Attributes:
        grid: The patch grid ``(rows, cols)``.
        token_mask: ``[B, L]`` validity (or training weight) of the tokens in ``features``; None
            when all are valid.
        keep_ratio: The per-stage keep ratios the pass ran with (the targets of a ratio loss).
    """
    grid: Optional[Tuple[int, int]] = None
    token_mask: Optional[torch.Tensor] = None
    keep_ratio: Tuple[float, ...] = ()

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        raise NotImplementedError

    @property
    def kept(self) -> torch.Tensor:
        """``[B, stages]`` patch tokens kept in each stage."""
        if not self.stage_weights:
            return self.tokens_per_block.new_zeros(self.tokens_per_block.shape[0], 0)
        return torch.stack([m.detach().sum(dim=1) for m in self.stage_weights], dim=1).round().long()

    kept_tokens = kept

    @property
    def kept_of(self) -> List[int]:
        return [self.num_patches] * len(self.stage_weights)

    @property
    def kept_masks(self) -> List[torch.Tensor]:
        return [m.detach() > 0.5 for m in self.stage_weights]

    @property
    def kept_total(self) -> int:
        return self.num_patches

    @property
    def per_block(self) -> torch.Tensor:
        return self.tokens_per_block

    @property
    def mlp_tokens_per_block(self) -> Optional[torch.Tensor]:
        """``[B, depth]`` tokens each block's MLP computed where blocks reduce their tokens between
        attention and MLP; None: the tokens entering the block."""
        return None

    @property
    def keep_rate(self) -> torch.Tensor:
        """``[B]`` fraction of the patches kept in the last stage (1 without stages)."""
        kept = self.kept
        if kept.shape[1] == 0:
            return kept.new_ones(kept.shape[0], dtype=torch.float64)
        return kept[:, -1].double() / self.num_patches


class TokenSparseViT(DynamicModel, VisionTransformer):
    """timm ``VisionTransformer`` base of the token-sparse families.

    Args:
        stem: 'patch' (timm's patchify convolution) or 'conv' (stride-2 3x3 convolutions,
            ``ConvPatchEmbed``; patch size a power of two).
        family_args: The family's own constructor arguments to store in ``model_args`` (those
            ``sparsity_config`` does not already hold).
        **kwargs: Passed to timm's ``VisionTransformer``.

    Class attributes:
        attn_layer: The attention class the blocks get unless ``attn_layer`` is given (None: timm's).
        class_token_use: What the family reads the class token for ('ranks tokens by the attention of
            the class token'); a family that needs one says so and models without one are refused.
    """
    attn_layer: ClassVar[Optional[type]] = None
    class_token_use: ClassVar[str] = ''

    def __init__(self, *, stem: str = 'patch', family_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if self.class_token_use and not kwargs.get('class_token', True):
            raise ValueError(f'{self.family} {self.class_token_use}; class_token=False is not supported')
        global_pool = kwargs.get('global_pool', 'token')
        if global_pool in ('map', 'prr'):
            raise ValueError(f"global_pool='{global_pool}' (attention pooling) is not supported by {self.family}; "
                             f"use 'token', 'avg', 'max' or 'avgmax'")
        backbone = dict(kwargs)
        layers = {'attn_layer': self.attn_layer} if self.attn_layer is not None else {}
        super().__init__(**{**layers, 'embed_layer': vit_embed_layer(stem), **kwargs})
        self.model_args = {**backbone, **(family_args or {}), **({'stem': stem} if stem != 'patch' else {})}

    # ---- forward ----
    def _forward_tokens(self, x: torch.Tensor, want_aux: bool, **kwargs: Any) -> Tuple[torch.Tensor, Optional[TokenAux]]:
        """The family's pass over images ``x``: output tokens ``[B, L, C]`` (after the final norm)
        and the aux (None when not wanted and not needed for pooling)."""
        raise NotImplementedError

    def _refuse_attn_mask(self, attn_mask: Optional[torch.Tensor], is_causal: bool) -> None:
        if attn_mask is not None or is_causal:
            raise ValueError(f'{self.family} selects tokens per image and runs its own attention; '
                             f'attn_mask and is_causal are not supported')

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Checks the images ``[B, C, H, W]`` and embeds them: tokens ``[B, P + N, C]``."""
        return embed_tokens(self, x)

    def _block(self, block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``block(x)`` (with an attention mask when one is given), checkpointed when that is on."""
        if attn_mask is None:
            return run_block(self, block, x)
        return run_block(self, block, x, attn_mask=attn_mask)

    def _patch_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        grid = self.patch_embed.dynamic_feat_size(x.shape[-2:]) if self.dynamic_img_size else self.patch_embed.grid_size
        return int(grid[0]), int(grid[1])

    def _extra_outputs(self, aux: TokenAux) -> None:
        """Adds outputs beyond the main head to a training aux (e.g. a second head's logits)."""

    def forward_features(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
            return_aux: bool = False,
            **kwargs: Any,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, TokenAux]]:
        """Embeds the images ``[B, C, H, W]`` and runs the blocks with token selection.

        Args:
            x: Images.
            attn_mask: Not supported (tokens are selected per image); must be None.
            is_causal: Not supported; must be False.
            return_aux: Also return the aux of this pass (with its MACs).
            **kwargs: The family's own options (e.g. fixed ``decisions``).

        Returns:
            Normalised tokens ``[B, L, C]`` (which ones: see the family); with ``return_aux`` also the aux.
        """
        self._refuse_attn_mask(attn_mask, is_causal)
        feats, aux = self._forward_tokens(x, return_aux, **kwargs)
        return (feats, self._finish_aux(aux)) if return_aux else feats

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
            return_aux: bool = False,
            **kwargs: Any,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, TokenAux]]:
        """Logits ``[B, num_classes]``; with ``return_aux`` also the aux (per-image MACs included)."""
        self._refuse_attn_mask(attn_mask, is_causal)
        feats, aux = self._forward_tokens(x, return_aux, **kwargs)
        logits = self.forward_head(feats, token_mask=None if aux is None else aux.token_mask)
        if not return_aux:
            return logits
        self._extra_outputs(aux)
        return logits, self._finish_aux(aux)

    def pool(
            self,
            x: torch.Tensor,
            pool_type: Optional[str] = None,
            token_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """timm's pooling, restricted to the tokens ``token_mask`` marks (weights in training)."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if token_mask is None or pool_type in ('token', ''):
            return super().pool(x, pool_type)
        if not self.pool_include_prefix:
            x, token_mask = x[:, self.num_prefix_tokens:], token_mask[:, self.num_prefix_tokens:]
        w = token_mask.to(x.dtype).unsqueeze(-1)  # [B, L, 1]
        avg = (x * w).sum(1) / w.sum(1).clamp_min(1e-6)
        if pool_type == 'avg':
            return avg
        mx = x.masked_fill(w < 0.5, float('-inf')).amax(1)
        return mx if pool_type == 'max' else 0.5 * (avg + mx)

    def forward_head(
            self,
            x: torch.Tensor,
            pre_logits: bool = False,
            token_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Pools the kept tokens (``token_mask``, see ``TokenAux``) and classifies."""
        x = self.pool(x, token_mask=token_mask)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, *args: Any, **kwargs: Any):
        """Refused while tokens are dropped: timm reshapes intermediates to the full patch grid."""
        if not self.is_dense():
            dense = ', '.join(f'{k}={v!r}' for k, v in self.dense_settings().items())
            raise NotImplementedError(
                f'forward_intermediates reshapes tokens to the full patch grid, which {self.family} does not keep; '
                f'use forward(x, return_aux=True) for the output tokens, or set {dense}')
        return super().forward_intermediates(*args, **kwargs)

    # ---- MACs ----
    def _selection_macs(self, aux: TokenAux) -> torch.Tensor:
        """``[B]`` MACs of the token selection itself (predictors, attention rows, ...)."""
        raise NotImplementedError

    def _spent_macs(self, aux: TokenAux) -> torch.Tensor:
        """Blocks on the tokens they computed, the patch embedding, the head and the selection."""
        return vit_macs(self, aux.tokens_per_block, aux.num_patches, aux.mlp_tokens_per_block) + self._selection_macs(aux)

    def _dense_macs(self, aux: TokenAux) -> int:
        return dense_vit_macs(self, aux.num_patches)


def deit_cfgs(prefix: str, make_cfg: Callable[..., Dict[str, Any]], *notes: str) -> Dict[str, Dict[str, Any]]:
    """The ``<prefix>_{tiny,small,base}_patch16_224.deit_in1k`` cfgs: timm's DeiT ImageNet-1k weights
    as the backbone (``notes``: what they give the family)."""
    return {f'{prefix}_{size}_patch16_224.deit_in1k': make_cfg(hf_hub_id=f'timm/deit_{size}_patch16_224.fb_in1k',
                                                              license='apache-2.0', notes=notes or None)
            for size in ('tiny', 'small', 'base')}


def tiny_test_cfgs(names: Sequence[str], make_cfg: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The cfgs of the tiny ``test_*`` variants: 32 px, 10 classes, no weights."""
    return {f'{name}.untrained': make_cfg(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
            for name in names}


def pico_cfgs(arch: str, make_cfg: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The cfgs of a ``*_pico_patch4_28`` architecture: the zoo's files of it, then ``untrained``."""
    return {**zoo_cfgs(arch, make_cfg),
            f'{arch}.untrained': make_cfg(input_size=(3, 28, 28), crop_pct=1.0, interpolation='bilinear')}


def pico_28_args(**kwargs: Any) -> Dict[str, Any]:
    """The zoo's small-image ViT (the ``*_pico_patch4_28`` variants): 28 px, patch 4 (7 x 7 = 49
    patches), 96 wide, 6 blocks, 3 heads, MLP ratio 4, class token, convolutional stem
    (arXiv:2106.14881); ``kwargs`` add the family's sparsity settings."""
    return dict(img_size=28, patch_size=4, embed_dim=96, depth=6, num_heads=3, stem='conv', **kwargs)


def build_token_vit(model_cls: type, filter_fn: Any, variant: str, model_args: Dict[str, Any], pretrained: bool = False,
                    **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a token family (``build_dynamic_model``: the variant's
    ``model_args``, its tag's, the caller's; a convolutional stem's first conv named in the
    pretrained cfg; ``features_only`` refused)."""
    kwargs = with_tag_args(variant, model_args, pretrained, kwargs)
    return build_dynamic_model(model_cls, variant, pretrained, filter_fn,
                               f'{model_cls.family} selects tokens and has no full feature grid', None,
                               **with_stem_cfg(kwargs))


def token_vit_checkpoint_filter(
        state_dict: Dict[str, torch.Tensor],
        model: TokenSparseViT,
        drop_suffixes: Tuple[str, ...] = (),
) -> Dict[str, torch.Tensor]:
    """Maps a checkpoint in timm's ViT layout (the family's own files, a released training script's
    ``ckpt['model']``, a dense timm/DeiT file, or another family's file: its backbone) onto
    ``model``, without the keys ending in ``drop_suffixes`` (constants a released code stores);
    key layouts that fit none raise a ValueError naming the keys."""
    state_dict = state_dict.get('model', state_dict)  # the released training scripts save ckpt['model']
    state_dict = model._drop_foreign_parts(state_dict)  # another family's file: its backbone
    if drop_suffixes:
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith(drop_suffixes)}
    state_dict = vit_checkpoint_filter_fn(state_dict, model)
    # timm drops a classifier of another size and adapts the input channels after this filter
    check_state_dict(state_dict, model, ignore=('head.',), any_shape=first_conv_keys(model))
    return state_dict


def check_attention_blocks(model: VisionTransformer, what: str) -> None:
    """Refuses, in one line, blocks other than timm ``Block`` with timm ``Attention`` (a family that
    ``what``, e.g. 'merges tokens', inside them needs their queries, keys and values)."""
    bad = [i for i, b in enumerate(model.blocks) if not (is_packable(b) and is_timm_attention(b.attn))]
    if bad:
        b = model.blocks[bad[0]]
        raise ValueError(f'{model.family} {what} inside timm Block blocks with timm Attention; blocks {bad} are '
                         f'{type(b).__name__} with {type(getattr(b, "attn", None)).__name__}')


def adopt_plain_vit(model: nn.Module, family_cls: type, init: str, **settings: Any) -> TokenSparseViT:
    """Turns a built timm ``VisionTransformer`` into ``family_cls``, in place (``dynvit.apply``).

    The class is swapped (as token-merging patches of timm models do): modules, weights and their
    configuration stay the very same objects. ``family_cls``'s method ``init(**settings)`` then
    sets up its settings (and checks the blocks); if it raises, the model is left a plain ViT.

    Args:
        model: A plain timm ``VisionTransformer`` (not a subclass with its own forward).
        family_cls: A ``TokenSparseViT`` subclass.
        init: The name of its method that sets up its settings on an adopted model.
        **settings: Its sparsity settings.

    Returns:
        The same model object, now a ``family_cls``.
    """
    family, name = family_cls.family, type(model).__name__
    if isinstance(model, TokenSparseViT):
        raise ValueError(f'{name} is already a dynvit token model; set its sparsity instead')
    if type(model) is not VisionTransformer:
        what = 'overrides timm\'s VisionTransformer (its forward may differ)' if isinstance(model, VisionTransformer) \
            else 'is not a timm VisionTransformer'
        raise ValueError(f'{family} applies to plain timm VisionTransformer models; {name} {what}')
    if model.global_pool in ('map', 'prr'):
        raise ValueError(f"{family} does not support global_pool='{model.global_pool}' (attention pooling)")
    if family_cls.class_token_use and not model.has_class_token:
        raise ValueError(f'{family} reads the attention of the class token, and this {name} has none')
    model.__class__ = family_cls
    try:
        getattr(model, init)(**settings)
    except Exception:
        model.__class__ = VisionTransformer
        model.__dict__.pop('_sparsity', None)
        raise
    return model
