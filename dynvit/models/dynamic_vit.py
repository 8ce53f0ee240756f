"""DynamicViT on timm's VisionTransformer.

Paper: DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification
(Rao, Zhao, Liu, Lu, Zhou, Hsieh; NeurIPS 2021), arXiv:2106.02034.

Keep predictors before blocks ``prune_loc`` score the patch tokens; each stage keeps a
fraction ``keep_ratio[s]`` of the *original* patches (CLS and register tokens always stay).
Three executions of the same decisions:

* training (``model.train()``): hard Gumbel-softmax decisions, cumulative across stages;
  nothing is removed, dropped tokens are hidden as attention keys by an SDPA mask;
* ``mode='topk'`` (eval): every image keeps its top-k tokens, k fixed per stage, gathered
  into a smaller ``[B, k, C]`` tensor so later blocks do less work;
* ``mode='threshold'`` (eval): every image keeps the tokens whose keep probability reaches
  ``threshold``, so counts differ per image; the images are packed into one sequence and
  only attention runs per image.

``keep_ratio``, ``mode`` and ``threshold`` are plain attributes: change them on a built model.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import (
    VisionTransformer,
    checkpoint_filter_fn as vit_checkpoint_filter_fn,
    init_weights_vit_timm,
)

from ..layers import (
    KeepPredictor,
    PolicyAttention,
    gather_tokens,
    is_packable,
    packed_block_forward,
    policy_bias,
    unpack_tokens,
)
from ..runtime.macs import vit_macs
from ._zoo import register_tag_args, shipped_cfgs
from ._helpers import (
    build_dynamic_model, check_state_dict, embed_tokens, fill_missing, first_conv_keys, is_scalar, run_block, vit_cfg,
    vit_embed_layer, with_stem_cfg)

__all__ = ['DynamicVisionTransformer', 'DynamicViTAux']

Mode = Literal['topk', 'threshold']
TokenOrder = Literal['position', 'score']


@dataclass
class DynamicViTAux:
    """What a forward pass decided, for losses, reports and pictures.

    Positions refer to the original patch grid (row-major, N patches), whatever the execution.

    Attributes:
        decisions: Per stage ``[B, N]`` float, 1 where the patch is kept after the stage
            (cumulative). In training it carries the straight-through Gumbel gradient.
        keep_probs: Per stage ``[B, N]`` keep probability from the predictor (0 where the patch
            was already dropped or the stage was skipped).
        tokens_per_block: ``[B, depth]`` tokens entering each block, prefix tokens included.
        predictor_tokens: ``[B, stages]`` patch tokens each predictor scored (0 if skipped).
        num_patches: N.
        token_mask: Validity/weight of the tokens returned by ``forward_features`` ``[B, L]``
            (None when all are valid): the kept-token policy in training, padding in
            threshold mode.
        token_index: ``[B, L]`` original token index (prefix tokens first) of each returned
            token in top-k mode; None when the tokens are in original positions.
        features: The normalised output tokens (what ``forward_features`` returned).
        execution: ``'masked'`` (training / fixed decisions), ``'gathered'`` (top-k) or
            ``'packed'`` (threshold).
    """
    decisions: List[torch.Tensor]
    keep_probs: List[torch.Tensor]
    tokens_per_block: torch.Tensor
    predictor_tokens: torch.Tensor
    num_patches: int
    token_mask: Optional[torch.Tensor] = None
    token_index: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None
    execution: str = 'masked'

    @property
    def kept_tokens(self) -> torch.Tensor:
        """``[B, stages]`` patch tokens kept after each stage."""
        if not self.decisions:
            return self.tokens_per_block.new_zeros(self.tokens_per_block.shape[0], 0)
        return torch.stack([d.detach().sum(dim=1) for d in self.decisions], dim=1).round().long()


def resolve_keep_ratio(keep_ratio: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
    """Per-stage keep ratios: a float rho gives (rho, rho^2, ...), a sequence is taken as is."""
    if is_scalar(keep_ratio):
        base = float(keep_ratio)
        if not 0.0 < base <= 1.0:
            raise ValueError(f'keep_ratio must be in (0, 1], got {keep_ratio}')
        ratios = tuple(base ** (s + 1) for s in range(num_stages))
    else:
        ratios = tuple(float(r) for r in keep_ratio)
        if len(ratios) != num_stages:
            raise ValueError(f'keep_ratio has {len(ratios)} values for {num_stages} prune locations')
        bad = [r for r in ratios if not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f'keep ratios must be in (0, 1], got {list(ratios)}')
        if any(b > a for a, b in zip(ratios, ratios[1:])):
            raise ValueError(
                f'keep ratios are fractions of the original patches and decisions are cumulative, '
                f'so they must not increase from stage to stage; got {list(ratios)}')
    return ratios


def _resolve_threshold(threshold: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
    values = (float(threshold),) * num_stages if is_scalar(threshold) else tuple(map(float, threshold))
    if len(values) != num_stages:
        raise ValueError(f'threshold has {len(values)} values for {num_stages} prune locations')
    if any(not 0.0 <= t <= 1.0 for t in values):
        raise ValueError(f'threshold is a keep probability and must be in [0, 1], got {list(values)}')
    return values


class DynamicVisionTransformer(VisionTransformer):
    """timm ``VisionTransformer`` with DynamicViT token sparsification.

    Args:
        prune_loc: Indices of the blocks before which tokens are pruned.
        keep_ratio: Fraction of the original patches kept after each stage: a float rho means
            (rho, rho^2, rho^3, ...), a sequence gives one value per stage.
        mode: Inference selection, ``'topk'`` (fixed count per stage) or ``'threshold'``.
        threshold: Keep probability a token needs in threshold mode (float or one per stage).
        token_order: Order of the kept tokens in top-k mode, ``'position'`` (raster order) or
            ``'score'`` (descending score, as the released DynamicViT code does).
        stem: 'patch' (timm's patchify convolution) or 'conv' (stride-2 3x3 convolutions,
            ``ConvPatchEmbed``; patch size a power of two).
        **kwargs: Passed to timm's ``VisionTransformer``.
    """

    def __init__(
            self,
            *,
            prune_loc: Sequence[int] = (3, 6, 9),
            keep_ratio: Union[float, Sequence[float]] = 0.7,
            mode: Mode = 'topk',
            threshold: Union[float, Sequence[float]] = 0.5,
            token_order: TokenOrder = 'position',
            stem: str = 'patch',
            **kwargs: Any,
    ) -> None:
        global_pool = kwargs.get('global_pool', 'token')
        if global_pool in ('map', 'prr'):
            raise ValueError(f"global_pool='{global_pool}' (attention pooling) is not supported by DynamicViT; "
                             "use 'token', 'avg', 'max' or 'avgmax'")
        model_args = dict(kwargs)
        super().__init__(**{'attn_layer': PolicyAttention, 'embed_layer': vit_embed_layer(stem), **kwargs})
        depth = len(self.blocks)
        prune_loc = tuple(int(i) for i in prune_loc)
        if not prune_loc or list(prune_loc) != sorted(set(prune_loc)) or not 0 <= prune_loc[0] <= prune_loc[-1] < depth:
            raise ValueError(f'prune_loc must be increasing block indices in [0, {depth}), got {list(prune_loc)}')
        self.prune_loc = prune_loc
        self._stage_of_block = {b: s for s, b in enumerate(prune_loc)}
        self.score_predictor = nn.ModuleList([KeepPredictor(self.embed_dim) for _ in prune_loc])
        for predictor in self.score_predictor:
            predictor.apply(init_weights_vit_timm)
        self.keep_ratio = keep_ratio
        self.mode = mode
        self.threshold = threshold
        self.token_order = token_order
        self.model_args = {**model_args, 'prune_loc': list(prune_loc), **({'stem': stem} if stem != 'patch' else {})}

    # ---- sparsity settings (changeable on a built model) ----
    @property
    def keep_ratio(self) -> Tuple[float, ...]:
        """Per-stage fraction of the original patches kept."""
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: Union[float, Sequence[float]]) -> None:
        self._keep_ratio = resolve_keep_ratio(value, len(self.prune_loc))

    @property
    def threshold(self) -> Tuple[float, ...]:
        """Per-stage keep-probability threshold of threshold mode."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: Union[float, Sequence[float]]) -> None:
        self._threshold = _resolve_threshold(value, len(self.prune_loc))

    @property
    def mode(self) -> str:
        """Inference selection: ``'topk'`` or ``'threshold'``."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in ('topk', 'threshold'):
            raise ValueError(f"mode must be 'topk' or 'threshold', got {value!r}")
        if value == 'threshold':
            bad = [i for i, b in enumerate(self.blocks) if not is_packable(b)]
            if bad:
                raise ValueError(f'threshold mode packs images and needs timm Block blocks; blocks {bad} are '
                                 f'{type(self.blocks[bad[0]]).__name__}')
        self._mode = value

    @property
    def token_order(self) -> str:
        """Order of kept tokens in top-k mode: ``'position'`` or ``'score'``."""
        return self._token_order

    @token_order.setter
    def token_order(self, value: TokenOrder) -> None:
        if value not in ('position', 'score'):
            raise ValueError(f"token_order must be 'position' or 'score', got {value!r}")
        self._token_order = value

    def set_sparsity(
            self,
            keep_ratio: Union[None, float, Sequence[float]] = None,
            mode: Optional[Mode] = None,
            threshold: Union[None, float, Sequence[float]] = None,
    ) -> 'DynamicVisionTransformer':
        """Changes the sparsity settings given (others stay); returns the model."""
        if keep_ratio is not None:
            self.keep_ratio = keep_ratio
        if threshold is not None:
            self.threshold = threshold
        if mode is not None:
            self.mode = mode
        return self

    def sparsity_config(self) -> Dict[str, Any]:
        """The current sparsity settings as plain values (stored with saved weights)."""
        return dict(
            prune_loc=list(self.prune_loc),
            keep_ratio=list(self.keep_ratio),
            mode=self.mode,
            threshold=list(self.threshold),
            token_order=self.token_order,
        )

    @torch.no_grad()
    def calibrate_threshold(
            self,
            x: torch.Tensor,
            keep_ratio: Union[None, float, Sequence[float]] = None,
    ) -> Tuple[float, ...]:
        """Sets per-stage thresholds so that, on average over ``x``, each stage keeps
        ``keep_ratio`` of the original patches (default: the model's top-k ratios).

        Images still differ: easy ones keep fewer tokens, hard ones more. Stages are
        calibrated in order, each on the tokens the earlier stages kept.

        Args:
            x: Calibration images ``[B, C, H, W]``.
            keep_ratio: Target mean kept fraction per stage (as for ``keep_ratio``).

        Returns:
            The thresholds, also stored in ``self.threshold``.
        """
        targets = resolve_keep_ratio(self.keep_ratio if keep_ratio is None else keep_ratio, len(self.prune_loc))
        mode, training = self.mode, self.training
        self.eval()
        self.mode = 'threshold'
        thresholds = [0.0] * len(self.prune_loc)
        try:
            for s, target in enumerate(targets):
                self.threshold = thresholds
                _, aux = self(x, return_aux=True)
                present = aux.decisions[s - 1] > 0 if s else torch.ones_like(aux.decisions[0], dtype=torch.bool)
                probs = aux.keep_probs[s][present].sort().values  # ascending
                keep_fraction = min(1.0, target * present.shape[0] * aux.num_patches / probs.numel())
                thresholds[s] = float(probs[int(round((1.0 - keep_fraction) * (probs.numel() - 1)))])
        finally:
            self.mode = mode
            self.train(training)
        self.threshold = thresholds
        return self.threshold

    def num_keep(self, stage: int, num_patches: int) -> int:
        """Patches kept after ``stage`` in top-k mode: ``int(N * keep_ratio[stage])``, at least 1."""
        return max(1, int(num_patches * self.keep_ratio[stage]))

    # ---- forward ----
    def _block(self, block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn_mask is None:
            return run_block(self, block, x)
        return run_block(self, block, x, attn_mask=attn_mask)

    def _forward_masked(self, x: torch.Tensor, decisions: Optional[Sequence[torch.Tensor]]) -> DynamicViTAux:
        """All tokens stay; dropped ones are hidden as keys. Gumbel decisions unless given."""
        B, L, _ = x.shape
        P = self.num_prefix_tokens
        N = L - P
        policy = x.new_ones(B, N)
        bias = None
        aux = _new_aux(x, len(self.blocks), len(self.prune_loc), N, 'masked')
        for i, block in enumerate(self.blocks):
            s = self._stage_of_block.get(i)
            if s is not None:
                prev = policy
                log_probs = self.score_predictor[s](x[:, P:], prev)  # [B, N, 2]
                if decisions is not None:
                    policy = _check_decision(decisions[s], B, N, s).to(device=x.device, dtype=x.dtype) * prev
                else:
                    policy = F.gumbel_softmax(log_probs, hard=True)[..., 0] * prev
                aux.decisions.append(policy)
                aux.keep_probs.append(log_probs[..., 0].exp() * prev.detach())
                aux.predictor_tokens[:, s] = prev.detach().sum(1).round().long()
                bias = policy_bias(torch.cat([policy.new_ones(B, P), policy], dim=1))
            aux.tokens_per_block[:, i] = P + policy.detach().sum(1).round().long()
            x = self._block(block, x, bias)
        aux.features = self.norm(x)
        aux.token_mask = torch.cat([policy.new_ones(B, P), policy], dim=1)
        return aux

    def _forward_gathered(self, x: torch.Tensor) -> DynamicViTAux:
        """Top-k per image, gathered: later blocks run on ``[B, P + k, C]``."""
        B, L, _ = x.shape
        P = self.num_prefix_tokens
        N = L - P
        index = torch.arange(N, device=x.device).expand(B, N)  # original positions of current patches
        decisions, keep_probs = [], []
        tokens_per_block, predictor_tokens = [], [0] * len(self.prune_loc)  # the same for every image
        for i, block in enumerate(self.blocks):
            s = self._stage_of_block.get(i)
            if s is not None:
                n_cur, k = index.shape[1], min(self.num_keep(s, N), index.shape[1])
                probs = x.new_zeros(B, N)
                if k < n_cur:
                    score = self.score_predictor[s](x[:, P:])[..., 0]  # [B, n_cur] keep log-prob
                    probs.scatter_(1, index, score.exp().to(probs.dtype))
                    top = score.topk(k, dim=1, sorted=self.token_order == 'score').indices
                    if self.token_order == 'position':
                        top = top.sort(dim=1).values
                    x = torch.cat([x[:, :P], gather_tokens(x[:, P:], top)], dim=1)
                    index = index.gather(1, top)
                    predictor_tokens[s] = n_cur
                decisions.append(x.new_zeros(B, N).scatter_(1, index, 1.0))
                keep_probs.append(probs)
            tokens_per_block.append(x.shape[1])
            x = self._block(block, x)
        prefix = torch.arange(P, device=x.device).expand(B, P)
        return DynamicViTAux(
            decisions=decisions,
            keep_probs=keep_probs,
            tokens_per_block=torch.tensor(tokens_per_block, device=x.device).expand(B, -1),
            predictor_tokens=torch.tensor(predictor_tokens, device=x.device).expand(B, -1),
            num_patches=N,
            token_index=torch.cat([prefix, index + P], dim=1),
            features=self.norm(x),
            execution='gathered',
        )

    def _forward_packed(self, x: torch.Tensor) -> DynamicViTAux:
        """Threshold per image; after the first stage images are packed into ``[1, T, C]``."""
        B, L, C = x.shape
        P = self.num_prefix_tokens
        N = L - P
        keep = torch.ones(B, N, dtype=torch.bool, device=x.device)  # kept patches, original positions
        prefix = keep.new_ones(B, P)
        lengths = None
        aux = _new_aux(x, len(self.blocks), len(self.prune_loc), N, 'packed')
        for i, block in enumerate(self.blocks):
            s = self._stage_of_block.get(i)
            if s is not None:
                if lengths is None:
                    x = x.reshape(1, B * L, C)
                sel = torch.cat([prefix, keep], dim=1)  # [B, L], packed tokens are its True entries, row-major
                is_patch = torch.arange(L, device=x.device).expand(B, L)[sel] >= P
                image_of = torch.arange(B, device=x.device)[:, None].expand(B, L)[sel]
                log_probs = self.score_predictor[s].forward_packed(x[0, is_patch], image_of[is_patch], B)
                probs = x.new_zeros(B, N)
                probs[keep] = log_probs[:, 0].exp().to(probs.dtype)
                new_keep = keep & (probs >= self.threshold[s])
                empty = ~new_keep.any(dim=1)
                if empty.any():  # every image keeps at least its best patch
                    best = probs.argmax(dim=1)
                    new_keep[empty, best[empty]] = True
                aux.predictor_tokens[:, s] = keep.sum(1)
                x = x[:, torch.cat([prefix, new_keep], dim=1)[sel]]
                keep = new_keep
                lengths = (P + keep.sum(1)).tolist()
                aux.decisions.append(keep.to(x.dtype))
                aux.keep_probs.append(probs)
            aux.tokens_per_block[:, i] = P + keep.sum(1)
            x = self._block(block, x) if lengths is None else packed_block_forward(block, x, lengths)
        x = self.norm(x)
        if lengths is not None:
            x, aux.token_mask = unpack_tokens(x, lengths)
        aux.features = x
        return aux

    def forward_features(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
            decisions: Optional[Sequence[torch.Tensor]] = None,
            return_aux: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, DynamicViTAux]]:
        """Embeds and runs the blocks with token sparsification.

        Args:
            x: Images ``[B, C, H, W]``.
            attn_mask: Not supported (tokens are selected per image); must be None.
            is_causal: Not supported; must be False.
            decisions: Optional fixed keep decisions, one ``[B, N]`` 0/1 tensor per stage; the
                masked (training-style) computation is then run with them in any mode.
            return_aux: Also return the ``DynamicViTAux`` of this pass.

        Returns:
            Normalised tokens ``[B, L, C]``: all tokens in training/with ``decisions``, the kept
            ones in top-k mode, zero-padded kept tokens in threshold mode (see
            ``aux.token_mask``); with ``return_aux`` also the aux.
        """
        if attn_mask is not None or is_causal:
            raise ValueError('DynamicViT selects tokens per image and builds its own attention masks; '
                             'attn_mask and is_causal are not supported')
        x = embed_tokens(self, x)
        if decisions is not None:
            if len(decisions) != len(self.prune_loc):
                raise ValueError(f'decisions has {len(decisions)} entries for {len(self.prune_loc)} stages')
            aux = self._forward_masked(x, decisions)
        elif self.training and any(r < 1.0 for r in self.keep_ratio):
            aux = self._forward_masked(x, None)
        elif self.mode == 'topk' or self.training:  # keep ratio 1.0 trains the dense model
            aux = self._forward_gathered(x)
        else:
            aux = self._forward_packed(x)
        return (aux.features, aux) if return_aux else aux.features

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
        """Pools the kept tokens (``token_mask``, see ``DynamicViTAux``) and classifies."""
        x = self.pool(x, token_mask=token_mask)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
            decisions: Optional[Sequence[torch.Tensor]] = None,
            return_aux: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, DynamicViTAux]]:
        """Logits ``[B, num_classes]``; with ``return_aux`` also the ``DynamicViTAux``."""
        feats, aux = self.forward_features(x, attn_mask, is_causal, decisions=decisions, return_aux=True)
        logits = self.forward_head(feats, token_mask=aux.token_mask)
        return (logits, aux) if return_aux else logits

    def forward_intermediates(self, *args: Any, **kwargs: Any):
        """Refused while tokens are dropped: intermediates are reshaped to the full patch grid."""
        if self.training or self.mode != 'topk' or any(r < 1.0 for r in self.keep_ratio):
            raise NotImplementedError(
                'forward_intermediates reshapes tokens to the full patch grid, which DynamicViT does not keep; '
                'use forward(x, return_aux=True) for the kept tokens, or set keep_ratio=1.0 in eval mode')
        return super().forward_intermediates(*args, **kwargs)

    # ---- MACs ----
    def count_macs(self, aux: DynamicViTAux) -> torch.Tensor:
        """MACs spent per image ``[B]``: backbone on the tokens each block saw, plus predictors."""
        macs = vit_macs(self, aux.tokens_per_block, aux.num_patches)
        for s, predictor in enumerate(self.score_predictor):
            tokens = aux.predictor_tokens[:, s].long()
            macs = macs + predictor.macs(tokens, (tokens > 0).long())
        return macs


def _new_aux(x: torch.Tensor, depth: int, num_stages: int, num_patches: int, execution: str) -> DynamicViTAux:
    B = x.shape[0]
    return DynamicViTAux(
        decisions=[],
        keep_probs=[],
        tokens_per_block=torch.zeros(B, depth, dtype=torch.long, device=x.device),
        predictor_tokens=torch.zeros(B, num_stages, dtype=torch.long, device=x.device),
        num_patches=num_patches,
        execution=execution,
    )


def _check_decision(decision: torch.Tensor, batch: int, num_patches: int, stage: int) -> torch.Tensor:
    if not isinstance(decision, torch.Tensor) or tuple(decision.shape) != (batch, num_patches):
        shape = tuple(decision.shape) if isinstance(decision, torch.Tensor) else type(decision).__name__
        raise ValueError(f'decisions[{stage}] must have shape {(batch, num_patches)}, got {shape}')
    values = decision.detach()
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f'decisions[{stage}] must hold 0/1 keep decisions')
    return decision


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: DynamicVisionTransformer) -> Dict[str, torch.Tensor]:
    """Maps a DynamicViT or a dense timm/DeiT ViT checkpoint onto ``model``.

    A dense checkpoint fills the backbone; the keep predictors keep their fresh initialisation.
    Key layouts that fit neither raise a ValueError naming the keys.
    """
    state_dict = vit_checkpoint_filter_fn(state_dict, model)
    state_dict = fill_missing(state_dict, model, ('score_predictor.',))
    # timm drops a classifier of another size and adapts the input channels after this filter
    check_state_dict(state_dict, model, ignore=('head.',), any_shape=first_conv_keys(model))
    return state_dict


def _create_dynamic_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    return build_dynamic_model(DynamicVisionTransformer, variant, pretrained, checkpoint_filter_fn,
                               'DynamicViT drops tokens and has no full feature grid', **with_stem_cfg(kwargs))


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return vit_cfg(url, classifier='head', paper_ids='arXiv:2106.02034',
                   paper_name='DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification', **kwargs)


# The released DeiT checkpoints (README model zoo of raoyongming/DynamicViT; download links as given there,
# Tsinghua Cloud). Trained at keep ratio 0.7 before blocks 3, 6, 9 (not stored in the files); the official
# eval keeps tokens in descending score order, which token_order='score' reproduces.
_OFFICIAL_ARGS = dict(prune_loc=(3, 6, 9), keep_ratio=0.7, token_order='score')
_OFFICIAL = {
    'dynamicvit_256_patch16_224': 'https://cloud.tsinghua.edu.cn/f/b0e1ff6af1004039855e/?dl=1',
    'dynamicvit_small_patch16_224': 'https://cloud.tsinghua.edu.cn/f/698896dfbcea430b9591/?dl=1',
    'dynamicvit_base_patch16_224': 'https://cloud.tsinghua.edu.cn/f/660f27ddb6b945a797a8/?dl=1',
}
register_tag_args({f'{arch}.official_r07_in1k': _OFFICIAL_ARGS for arch in _OFFICIAL})


def _official_cfg(url: str) -> Dict[str, Any]:
    return _cfg(url, license='mit', origin_url='https://github.com/raoyongming/DynamicViT',
                notes=('official DynamicViT checkpoint (ckpt["model"]); keep ratio 0.7 before blocks 3, 6, 9',))


default_cfgs = generate_default_cfgs({
    **{f'{arch}.official_r07_in1k': _official_cfg(url) for arch, url in _OFFICIAL.items()},
    # Backbone from timm's DeiT ImageNet-1k weights; keep predictors untrained.
    'dynamicvit_tiny_patch16_224.deit_in1k': _cfg(hf_hub_id='timm/deit_tiny_patch16_224.fb_in1k', license='apache-2.0'),
    'dynamicvit_small_patch16_224.deit_in1k': _cfg(hf_hub_id='timm/deit_small_patch16_224.fb_in1k', license='apache-2.0'),
    'dynamicvit_base_patch16_224.deit_in1k': _cfg(hf_hub_id='timm/deit_base_patch16_224.fb_in1k', license='apache-2.0'),
    # Tiny configurations for tests.
    'test_dynamicvit.untrained': _cfg(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
    'test_dynamicvit2.untrained': _cfg(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3),
    # trained by the zoo (weights/)
    **shipped_cfgs('dynamicvit_tiny_patch16_224', _cfg),
})


@register_model
def dynamicvit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Tiny (192 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dynamicvit_256_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on the DynamicViT paper's DeiT-256 (256 wide, 4 heads, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=256, depth=12, num_heads=4, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_256_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dynamicvit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Small (384 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dynamicvit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Base (768 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_dynamicvit(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """Tiny DynamicViT for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, class token."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        prune_loc=(1, 2, 3), keep_ratio=0.7)
    return _create_dynamic_vit('test_dynamicvit', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def test_dynamicvit2(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """Tiny DynamicViT for tests, DeiT-III style: no class token, a register token, average
    pooling, LayerScale, qk-norm, position embedding without prefix tokens."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        class_token=False, reg_tokens=1, global_pool='avg', no_embed_class=True, init_values=1e-5,
        qk_norm=True, prune_loc=(1, 3), keep_ratio=0.6)
    return _create_dynamic_vit('test_dynamicvit2', pretrained=pretrained, **dict(model_args, **kwargs))
