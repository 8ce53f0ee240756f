"""Evo-ViT on timm's VisionTransformer.

Paper: Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer (Xu, Zhang, Zhang,
Wang, Xu, Wei, Zhang, Sun, Ji; AAAI 2022), arXiv:2108.01390.

No learned predictor: a patch's importance is the attention the class token pays to it,
carried across blocks as a moving average ``score = (1 - t) * score + t * attention``. Before
each block in ``select_loc`` the patches are ranked; the top ``keep_ratio`` of them get the
full update in the blocks up to the next selection ("slow"), the rest (placeholders) are
summarised by a representative token whose residual every placeholder receives ("fast"),
see ``dynvit.layers.evo_update``. Blocks before the first selection are dense and only
provide attention; the output head pools all patch tokens (placeholders included).

``representative_token=False`` leaves placeholders unchanged, as the released DeiT code does
(for its checkpoints). ``keep_ratio``, ``select_loc``, ``tradeoff`` and
``representative_token`` are plain attributes: change them on a built model.

Training and inference run the same computation: the selection is a sort, the informative
tokens are gathered, and the placeholders' update is a broadcast add, so both are
differentiable where they should be (the importance itself is not).
"""
import copy
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn, init_weights_vit_timm

from ..families import spec_of
from ..layers import (
    block_forward_with_cls_attention,
    merge_slow_fast,
    split_slow_fast,
)
from ..losses import DistilledLoss, ObjectiveConfig, check_weight
from ._helpers import check_state_dict, first_conv_keys, is_scalar, run_block, vit_cfg
from ._base import setting
from ._staged import StagedTokenViT
from ._token_vit import (
    TokenAux,
    build_token_vit,
    check_attention_blocks,
    deit_cfgs,
    pico_28_args,
    pico_cfgs,
    tiny_test_cfgs,
)
from ._tags import register_tag_args

__all__ = ['EvoVisionTransformer', 'EvoViTAux', 'EvoViTLoss']


@dataclass
class EvoViTAux(TokenAux):
    """What a forward pass selected, for losses, reports and pictures (and, from ``TokenAux``,
    the MACs, the grid and the keep ratios of the pass).

    Positions refer to the original patch grid (row-major, N patches).

    Attributes:
        informative: Per selection ``[B, N]`` float, 1 for the patches given the full update
            in that stage.
        scores: Per selection ``[B, N]`` the importance the patches were ranked by.
        tokens_per_block: ``[B, depth]`` tokens each block computed: prefix tokens,
            informative patches and the representative token.
        cls_attention_keys: ``[B, depth]`` keys of the explicit class-attention row computed
            in each block (0 where the block did not need it).
        averaged_placeholders: ``[B, stages]`` placeholders averaged into a representative token.
        num_patches: N.
        cls_token: The class token before the final norm ``[B, C]`` (input of the class-token head).
        cls_logits: The class-token head's logits (training mode, with ``aux_head``), else None.
    """
    informative: List[torch.Tensor]
    scores: List[torch.Tensor]
    tokens_per_block: torch.Tensor
    cls_attention_keys: torch.Tensor
    averaged_placeholders: torch.Tensor
    num_patches: int
    cls_token: Optional[torch.Tensor] = None
    cls_logits: Optional[torch.Tensor] = None

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        """A stage's fully updated patches. (``features``, from ``TokenAux``, are all the output
        tokens in original positions, after the final norm; with patch pooling the norm comes
        after pooling, ``fc_norm``.)"""
        return self.informative


# ---- the objective ----

class EvoViTLoss(DistilledLoss):
    """The Evo-ViT training objective.

    ``loss = (1 - cls_weight) * ce(logits) + cls_weight * ce(aux.cls_logits)
    + distill_weight * kl(logits, teacher_logits)``; the distillation term is skipped when no
    teacher output is given.

    Args:
        base_criterion: Classification loss (default cross-entropy).
        cls_weight: Share of the class-token head in the classification loss, in [0, 1]
            (0.5 in the paper; 0 for a model without ``aux_head``).
        distill_weight: Weight of ``distillation_kl`` on the main head's logits.
        temperature: Softening temperature of the distillation.
    """

    def __init__(
            self,
            base_criterion: Optional[nn.Module] = None,
            cls_weight: float = 0.5,
            distill_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        self.cls_weight = check_weight('cls_weight', cls_weight, 0.0, 1.0)
        super().__init__(base_criterion, distill_weight, temperature)

    def forward(
            self,
            logits: torch.Tensor,
            aux: Optional['EvoViTAux'],
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: The main head's logits ``[B, K]``.
            aux: The ``EvoViTAux`` of a training-mode forward (carries the class-token head's logits).
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Teacher logits ``[B, K]``.

        Returns:
            The total loss and its detached parts by name.
        """
        parts = {'ce': self.base_criterion(logits, target)}
        total = (1.0 - self.cls_weight) * parts['ce']
        if self.cls_weight > 0:
            if getattr(aux, 'cls_logits', None) is None:
                raise ValueError('the class-token head loss needs aux.cls_logits: run the model in training mode '
                                 'with return_aux=True (and aux_head=True), or set cls_weight=0')
            parts['ce_cls'] = self.base_criterion(aux.cls_logits, target)
            total = total + self.cls_weight * parts['ce_cls']
        return self._with_distillation(total, parts, logits, teacher_logits)


class EvoVisionTransformer(StagedTokenViT):
    """timm ``VisionTransformer`` with Evo-ViT slow-fast token evolution.

    Args:
        select_loc: Blocks before which the patches are ranked and split into informative
            ones and placeholders; the first is where slow-fast updating starts (at least 1:
            the ranking needs the class attention of an earlier block). ``(4, 8)`` is the
            released code's stage-wise schedule, ``range(4, 12)`` the layer-wise one.
        keep_ratio: Fraction of the patches given the full update, one float for all stages
            or one per stage.
        tradeoff: Weight t of the current block's class attention in the moving average, in
            (0, 1]; blocks before the first selection use 1.
        representative_token: Update the placeholders through a representative token (the
            paper); False leaves them unchanged (the released DeiT code).
        aux_head: Add the class-token head (``norm_cls``, ``head_cls``) Evo-ViT trains beside
            the main head; its logits come in ``aux.cls_logits`` in training mode.
        **kwargs: ``stem`` ('patch' or 'conv', see ``TokenSparseViT``) and timm's
            ``VisionTransformer`` arguments (it needs a class token).
    """
    spec = spec_of('Evo-ViT')
    class_token_use = 'ranks patches by the attention of the class token'
    sparsity_args = ('select_loc', 'keep_ratio', 'tradeoff', 'representative_token', 'aux_head')
    loc_arg = 'select_loc'
    loc_lowest = 1
    loc_why = ' (the ranking needs the class attention of an earlier block)'
    stages_what = 'selections (select_loc)'
    ratio_meaning = 'the fraction of patches given the full update'

    select_loc = setting('select_loc', 'Blocks before which the patches are re-ranked.')
    tradeoff = setting('tradeoff', "Weight of the current block's class attention in the moving average.")
    representative_token = setting('representative_token',
                                   'Whether placeholders are updated through a representative token.')

    def __init__(
            self,
            *,
            select_loc: Sequence[int] = (4, 8),
            keep_ratio: Union[float, Sequence[float]] = 0.5,
            tradeoff: float = 0.5,
            representative_token: bool = True,
            aux_head: bool = True,
            **kwargs: Any,
    ) -> None:
        super().__init__(family_args={'aux_head': aux_head}, **kwargs)
        check_attention_blocks(self, 'reads the class attention')
        self.norm_cls: Optional[nn.Module] = None
        self.head_cls: Optional[nn.Module] = None
        if aux_head:
            final_norm = self.fc_norm if isinstance(self.norm, nn.Identity) else self.norm
            self.norm_cls = copy.deepcopy(final_norm)
            self.head_cls = self._new_cls_head()
        if select_loc is None or keep_ratio is None or tradeoff is None or representative_token is None:
            raise ValueError('select_loc, keep_ratio, tradeoff and representative_token cannot be None')
        self._update_sparsity(dict(select_loc=select_loc, keep_ratio=keep_ratio, tradeoff=tradeoff,
                                   representative_token=representative_token))

    def _new_cls_head(self) -> nn.Module:
        if self.num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, self.num_classes)
        init_weights_vit_timm(head)
        ref = self.cls_token
        return head.to(device=ref.device, dtype=ref.dtype)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Resets the main head (timm's way) and the class-token head."""
        super().reset_classifier(num_classes, global_pool)
        if self.head_cls is not None:
            self.head_cls = self._new_cls_head()
            self.head_cls.train(self.training)

    # ---- sparsity settings (changeable on a built model) ----
    def _checked_family_settings(self, settings: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        tradeoff = given.get('tradeoff', settings.get('tradeoff'))
        if isinstance(tradeoff, bool) or not is_scalar(tradeoff) or not 0.0 < float(tradeoff) <= 1.0:
            raise ValueError(f'tradeoff must be a number in (0, 1], got {tradeoff!r}')
        representative = given.get('representative_token', settings.get('representative_token'))
        if not isinstance(representative, bool):
            raise ValueError(f'representative_token must be True or False, got {representative!r}')
        return {**settings, 'tradeoff': float(tradeoff), 'representative_token': representative}

    def training_objective(self, config: ObjectiveConfig) -> EvoViTLoss:
        """Half of the cross-entropy on each head (none on a missing class-token head), logit distillation."""
        return EvoViTLoss(base_criterion=config.criterion(), cls_weight=0.5 if self.head_cls is not None else 0.0,
                          **config.distillation())

    # ---- forward ----
    def _forward_tokens(self, images: torch.Tensor, want_aux: bool) -> Tuple[torch.Tensor, Optional[EvoViTAux]]:
        """Embeds and runs the blocks with slow-fast token evolution.

        Args:
            images: ``[B, C, H, W]``.
            want_aux: Also make the ``EvoViTAux`` of this pass (else None).

        Returns:
            Tokens ``[B, P + N, C]`` in original positions, after the final norm (Identity when the
            model normalises pooled features, ``fc_norm``), and the aux.
        """
        x = self._embed(images)
        B, L, _ = x.shape
        P = self.num_prefix_tokens
        N = L - P
        loc = self.select_loc
        keeps = [min(self.num_keep(s, N), N) for s in range(len(loc))]
        # the ranking before select_loc[s] reads the class attention of blocks select_loc[0] - 1 on
        # (earlier ones are overwritten with t = 1); without a ranking no attention row is needed
        last_read = 0  # the last ranking block (loc increases); a plain loop: older dynamo rejects max(default=)
        for b, k in zip(loc, keeps):
            if k < N:
                last_read = b
        tokens, row_keys, averaged = [], [], []  # per block, per block, per stage: the same for every image
        informative_index, scores = [], []
        score = None  # [B, N] importance (no gradient), as of the current stage's start
        seen = None  # [B, k] the informative patches' importance during a stage (their moving average)
        full = x  # all tokens in original positions as of the current stage's start
        informative = rep = None  # the current stage's informative patch indices [B, k] and representative token
        for i, block in enumerate(self.blocks):
            s = self.stage_of_block(i)
            if s is not None:
                if informative is not None:
                    x = merge_slow_fast(full, x, P, informative, rep)
                    if seen is not None:  # the stage updated its informative patches' importance
                        score = score.scatter(1, informative, seen)
                full, informative, rep, seen = x, None, None, None
                if keeps[s] < N:
                    informative = score.topk(keeps[s], dim=1).indices  # [B, k], the most important first
                    x, rep = split_slow_fast(full, P, informative, score if self.representative_token else None)
                    if i < last_read:  # this stage reads attention rows: the placeholders' importance stays
                        seen = score.gather(1, informative)
                averaged.append(N - keeps[s] if rep is not None else 0)
                informative_index.append(informative)
                scores.append(score)
            tokens.append(x.shape[1])
            if loc[0] - 1 <= i < last_read:
                x, row = run_block(self, block_forward_with_cls_attention, block, x)
                row_keys.append(x.shape[1])
                # the moving average (1 - t) * old + t * row (one kernel: torch.lerp); t = 1 before the first selection
                if score is None or i < loc[0]:
                    score = row[:, P:] + torch.finfo(row.dtype).tiny  # positive: every placeholder set weighs > 0
                elif seen is None:
                    score = torch.lerp(score, row[:, P:P + N], self.tradeoff)
                else:
                    seen = torch.lerp(seen, row[:, P:P + seen.shape[1]], self.tradeoff)
            else:
                x = run_block(self, block, x)
                row_keys.append(0)
        if informative is not None:
            x = merge_slow_fast(full, x, P, informative, rep)
        cls_token = x[:, 0]
        x = self.norm(x)
        if not want_aux:
            return x, None

        aux = EvoViTAux(
            informative=[x.new_ones(B, N) if idx is None else x.new_zeros(B, N).scatter_(1, idx, 1.0)
                         for idx in informative_index],
            scores=[x.new_zeros(B, N) if sc is None else sc for sc in scores],
            tokens_per_block=self._per_image(tokens, B, x.device),
            cls_attention_keys=self._per_image(row_keys, B, x.device),
            averaged_placeholders=self._per_image(averaged, B, x.device),
            num_patches=N,
            features=x,
            cls_token=cls_token,
            grid=self._patch_grid(images),
            keep_ratio=self.keep_ratio,
        )
        return x, aux

    def _extra_outputs(self, aux: EvoViTAux) -> None:
        """The class-token head's logits, in training mode (for its half of the loss)."""
        if self.training and self.head_cls is not None:
            aux.cls_logits = self.head_cls(self.norm_cls(aux.cls_token))

    # ---- MACs ----
    def _selection_macs(self, aux: EvoViTAux) -> torch.Tensor:
        """The class-attention rows (q_cls K^T) and the representative tokens' weighted means (each
        one product over all N patches, the informative ones weighing 0)."""
        macs = (aux.averaged_placeholders > 0).sum(dim=1) * aux.num_patches * self.embed_dim
        for i, block in enumerate(self.blocks):
            macs = macs + aux.cls_attention_keys[:, i] * (block.attn.num_heads * block.attn.head_dim)
        return macs


_OFFICIAL_KEY = re.compile(r'^(qks|vs|norms|projs)\.(\d+)\.(?:(?:qk|v)\.)?(weight|bias)$')


def _from_official_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The released Evo-ViT DeiT code keeps attention outside its blocks: ``norms.{i}``,
    ``qks.{i}.qk`` (q and k stacked), ``vs.{i}.v`` and ``projs.{i}``. Maps them onto timm's
    ``blocks.{i}.norm1`` / ``attn.qkv`` / ``attn.proj``."""
    out, qk, v = {}, {}, {}
    for key, value in state_dict.items():
        m = _OFFICIAL_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        kind, i, param = m.groups()
        if kind == 'norms':
            out[f'blocks.{i}.norm1.{param}'] = value
        elif kind == 'projs':
            out[f'blocks.{i}.attn.proj.{param}'] = value
        else:
            (qk if kind == 'qks' else v)[(i, param)] = value
    for i, param in sorted(set(qk) | set(v)):
        if (i, param) not in qk or (i, param) not in v:
            have = 'qks' if (i, param) in qk else 'vs'
            raise ValueError(f'official Evo-ViT checkpoint: block {i} has {have} {param} but not the other half '
                             f'of its attention projection')
        out[f'blocks.{i}.attn.qkv.{param}'] = torch.cat([qk[i, param], v[i, param]], dim=0)
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EvoVisionTransformer) -> Dict[str, torch.Tensor]:
    """Maps an Evo-ViT checkpoint (ours or the released DeiT code's), a dense timm/DeiT ViT
    checkpoint or another family's (its backbone) onto ``model``.

    A dense checkpoint's final norm and head also initialise the class-token head, and its
    final norm the pooled-feature norm (``fc_norm``) when the model pools patches. Key layouts
    that fit none of these raise a ValueError naming the keys.
    """
    state_dict = state_dict.get('model', state_dict)
    if any(k.startswith('qks.') for k in state_dict):
        state_dict = _from_official_layout(state_dict)
    state_dict = model._drop_foreign_parts(state_dict)  # another family's file: its backbone
    state_dict = vit_checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    # the checkpoint's final norm sits before pooling (norm) or after it (fc_norm); put it where the model has it
    final_norm = 'norm.' if 'norm.weight' in state_dict else 'fc_norm.'
    source = {k[len(final_norm):]: v for k, v in state_dict.items() if k.startswith(final_norm)}
    target = 'norm.' if 'norm.weight' in own else 'fc_norm.' if 'fc_norm.weight' in own else None
    if target is not None and target != final_norm and target + 'weight' not in state_dict:
        for k in source:
            state_dict[target + k] = state_dict.pop(final_norm + k)
    if model.head_cls is not None:  # the final norm and head also start the class-token head
        for k, v in source.items():
            state_dict.setdefault('norm_cls.' + k, v)
        for k in [k for k in state_dict if k.startswith('head.')]:
            state_dict.setdefault('head_cls.' + k[len('head.'):], state_dict[k])
    else:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(('norm_cls.', 'head_cls.'))}
    # timm drops classifiers of another size and adapts the input channels after this filter
    check_state_dict(state_dict, model, ignore=('head.', 'head_cls.'), any_shape=first_conv_keys(model))
    return state_dict


# _create_*(variant, model_args, pretrained, **kwargs): the variant built with its family's checkpoint filter
_create_evo_vit = partial(build_token_vit, EvoVisionTransformer, checkpoint_filter_fn)


_cfg = partial(vit_cfg, spec=EvoVisionTransformer.spec, classifier=('head', 'head_cls'))


# The released DeiT checkpoints (README of YifanXu74/Evo-ViT; Google Drive links as given there, in their
# direct-download form). The released code's schedule: half of the patches get the full update from
# block 4 on (re-ranked before blocks 4 and 8, t = 0.5), the others are left unchanged (no
# representative token), the eval head reads norm(mean of the patch tokens).
_OFFICIAL_ARGS = dict(select_loc=(4, 8), keep_ratio=0.5, tradeoff=0.5, representative_token=False,
                      global_pool='avg')
_GDRIVE = 'https://drive.google.com/uc?export=download&id='
_OFFICIAL = {
    'evovit_tiny_patch16_224': _GDRIVE + '1AL4uHGHvCoFXkrtHRgf4XmurgRs5-qab',
    'evovit_small_patch16_224': _GDRIVE + '1AiD1J-z9klr72-zczkJzX1HHVlxO7iin',
    'evovit_base_patch16_224': _GDRIVE + '15EmMKb4L5IjHqnMYQHVNYZGRRGdByTsz',
    'evovit_base_patch16_384': _GDRIVE + '1MBSH4Fx8Bq9cgGhktvYAb23EFioiv2y2',
}
register_tag_args({f'{arch}.official_in1k': _OFFICIAL_ARGS for arch in _OFFICIAL})


def _official_cfg(arch: str) -> Dict[str, Any]:
    size = 384 if arch.endswith('384') else 224
    return _cfg(_OFFICIAL[arch], input_size=(3, size, size),  # DeiT eval: resize to size / 0.875, center crop
                license='unspecified (the repository has no license file)',
                origin_url='https://github.com/YifanXu74/Evo-ViT',
                notes=('official Evo-ViT checkpoint (ckpt["model"]); released schedule without representative token',))


_DEIT_NOTE = 'timm\'s DeiT ImageNet-1k weights (backbone and both heads), to fine-tune Evo-ViT from'

default_cfgs = generate_default_cfgs({
    **{f'{arch}.official_in1k': _official_cfg(arch) for arch in _OFFICIAL},
    **deit_cfgs('evovit', _cfg, _DEIT_NOTE),  # the backbone and both heads; Evo-ViT fine-tunes from these
    **tiny_test_cfgs(('test_evovit', 'test_evovit2'), _cfg),
    **pico_cfgs('evovit_pico_patch4_28', _cfg),  # trained by the zoo (weights/)
})


def _evo_deit_args(embed_dim: int, num_heads: int) -> Dict[str, Any]:
    """DeiT geometry with the released schedule: half of the patches get the full update from
    block 4 on, re-ranked before blocks 4 and 8; the head pools all patches."""
    return dict(patch_size=16, embed_dim=embed_dim, depth=12, num_heads=num_heads, global_pool='avg',
                select_loc=(4, 8), keep_ratio=0.5, tradeoff=0.5)


@register_model
def evovit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Evo-ViT on DeiT-Tiny (192 wide, 12 blocks)."""
    model_args = _evo_deit_args(embed_dim=192, num_heads=3)
    return _create_evo_vit('evovit_tiny_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evovit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Evo-ViT on DeiT-Small (384 wide, 12 blocks)."""
    model_args = _evo_deit_args(embed_dim=384, num_heads=6)
    return _create_evo_vit('evovit_small_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evovit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Evo-ViT on DeiT-Base (768 wide, 12 blocks)."""
    model_args = _evo_deit_args(embed_dim=768, num_heads=12)
    return _create_evo_vit('evovit_base_patch16_224', model_args, pretrained, **kwargs)


@register_model
def evovit_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Evo-ViT on DeiT-Base at 384 px (576 patches)."""
    model_args = dict(_evo_deit_args(embed_dim=768, num_heads=12), img_size=384)
    return _create_evo_vit('evovit_base_patch16_384', model_args, pretrained, **kwargs)


@register_model
def evovit_pico_patch4_28(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Evo-ViT on the zoo's 28-px ViT (patch 4: 49 patches; 96 wide, 6 blocks, 3 heads, convolutional
    stem, class-token pooling). By default half of the patches get the full update in blocks 1-5,
    re-ranked in each."""
    model_args = pico_28_args(select_loc=(1, 2, 3, 4, 5), keep_ratio=0.5)
    return _create_evo_vit('evovit_pico_patch4_28', model_args, pretrained, **kwargs)


@register_model
def test_evovit(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Tiny Evo-ViT for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, average pooling,
    stage-wise selection before blocks 2 and 3."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, global_pool='avg',
        select_loc=(2, 3), keep_ratio=0.5)
    return _create_evo_vit('test_evovit', model_args, pretrained, **kwargs)


@register_model
def test_evovit2(pretrained: bool = False, **kwargs: Any) -> EvoVisionTransformer:
    """Tiny Evo-ViT for tests: class-token pooling, a register token, LayerScale, qk-norm,
    position embedding on patches only, layer-wise selection from block 1, convolutional stem."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        reg_tokens=1, no_embed_class=True, init_values=1e-5, qk_norm=True, stem='conv',
        select_loc=(1, 2, 3), keep_ratio=(0.5, 0.4, 0.3), tradeoff=0.7)
    return _create_evo_vit('test_evovit2', model_args, pretrained, **kwargs)
