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
from functools import partial
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn, init_weights_vit_timm

from ..families import spec_of
from ..layers import (
    KeepPredictor,
    PolicyAttention,
    gather_tokens,
    is_packable,
    packed_block_forward,
    policy_bias,
    unpack_tokens,
)
from ..losses import DistilledLoss, ObjectiveConfig, distillation_kl
from ._helpers import check_state_dict, fill_missing, first_conv_keys, is_scalar, vit_cfg
from ._base import setting
from ._staged import StagedTokenViT
from ._token_vit import TokenAux, build_token_vit, deit_cfgs, pico_28_args, pico_cfgs, tiny_test_cfgs
from ._tags import register_tag_args

__all__ = ['DynamicVisionTransformer', 'DynamicViTAux', 'DynamicViTLoss', 'ratio_loss', 'resolve_keep_ratio',
           'token_distillation_loss']

Mode = Literal['topk', 'threshold']
TokenOrder = Literal['position', 'score']


@dataclass
class DynamicViTAux(TokenAux):
    """What a forward pass decided, for losses, reports and pictures (and, from ``TokenAux``,
    the MACs, the grid, the token mask and the keep ratios of the pass).

    Positions refer to the original patch grid (row-major, N patches), whatever the execution.

    Attributes:
        decisions: Per stage ``[B, N]`` float, 1 where the patch is kept after the stage
            (cumulative). In training it carries the straight-through Gumbel gradient.
        keep_probs: Per stage ``[B, N]`` keep probability from the predictor (0 where the patch
            was already dropped or the stage was skipped).
        tokens_per_block: ``[B, depth]`` tokens entering each block, prefix tokens included.
        predictor_tokens: ``[B, stages]`` tokens each predictor scored (0 if skipped): the patches,
            and in the gathered execution the prefix tokens too (scored with them, ranked first).
        num_patches: N.
        token_index: ``[B, L]`` original token index (prefix tokens first) of each returned
            token in top-k mode; None when the tokens are in original positions.
        execution: ``'masked'`` (training / fixed decisions), ``'gathered'`` (top-k) or
            ``'packed'`` (threshold).
    """
    decisions: List[torch.Tensor]
    keep_probs: List[torch.Tensor]
    tokens_per_block: torch.Tensor
    predictor_tokens: torch.Tensor
    num_patches: int
    token_index: Optional[torch.Tensor] = None
    execution: str = 'masked'

    @property
    def stage_weights(self) -> List[torch.Tensor]:
        """The cumulative keep decisions: a stage's kept patches."""
        return self.decisions


def resolve_keep_ratio(keep_ratio: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
    """Per-stage keep ratios: a float rho gives (rho, rho^2, ...), a sequence is taken as is."""
    if is_scalar(keep_ratio):
        base = float(keep_ratio)
        if not 0.0 < base <= 1.0:
            raise ValueError(f'keep_ratio must be in (0, 1], got {keep_ratio}')
        return tuple(base ** (s + 1) for s in range(num_stages))
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


# ---- the objective ----

def ratio_loss(decisions: Sequence[torch.Tensor], keep_ratios: Sequence[float]) -> torch.Tensor:
    """Mean over stages of the squared gap between each image's kept fraction and the target.

    Args:
        decisions: Per stage ``[B, N]`` keep decisions over the original patches.
        keep_ratios: Target fraction of the original patches per stage.

    Returns:
        Scalar ``mean_s mean_b (mean_n d[s][b, n] - keep_ratios[s])^2``.
    """
    if len(decisions) != len(keep_ratios):
        raise ValueError(f'{len(decisions)} decision stages but {len(keep_ratios)} keep ratios')
    terms = [((d.mean(dim=1) - r) ** 2).mean() for d, r in zip(decisions, keep_ratios)]
    return torch.stack(terms).mean()


def token_distillation_loss(
        student_tokens: torch.Tensor,
        teacher_tokens: torch.Tensor,
        keep: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between student and teacher tokens at the positions the student kept.

    Args:
        student_tokens: ``[B, N, C]`` final student patch tokens in original positions.
        teacher_tokens: ``[B, N, C]`` the dense teacher's final patch tokens.
        keep: ``[B, N]`` final keep decisions (> 0.5 = kept).

    Returns:
        Scalar MSE over kept tokens and channels (0 when nothing is kept).
    """
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(f'student tokens {tuple(student_tokens.shape)} and teacher tokens '
                         f'{tuple(teacher_tokens.shape)} differ in shape')
    mask = keep.detach() > 0.5
    if not bool(mask.any()):
        return student_tokens.sum() * 0.0
    return (student_tokens[mask] - teacher_tokens.detach()[mask]).pow(2).mean()


class DynamicViTLoss(DistilledLoss):
    """The DynamicViT training objective.

    ``loss = ce + ratio_weight * ratio + distill_weight * kl + token_weight * token_mse``;
    the distillation terms are skipped when no teacher output is given.

    Args:
        keep_ratios: Target kept fraction of the original patches per stage; None (default):
            the ratios the forward ran with (``aux.keep_ratio``), so a sparsity schedule that
            moves the model's keep ratio moves the target with it.
        base_criterion: Classification loss (default cross-entropy; pass e.g. timm's
            ``SoftTargetCrossEntropy`` for mixup targets).
        ratio_weight: Weight of ``ratio_loss``.
        distill_weight: Weight of ``distillation_kl`` on the logits.
        token_weight: Weight of ``token_distillation_loss``.
        temperature: Softening temperature of the logit distillation.
    """

    def __init__(
            self,
            keep_ratios: Optional[Sequence[float]] = None,
            base_criterion: Optional[nn.Module] = None,
            ratio_weight: float = 2.0,
            distill_weight: float = 0.5,
            token_weight: float = 0.5,
            temperature: float = 1.0,
    ) -> None:
        super().__init__(base_criterion, distill_weight, temperature)
        self.keep_ratios = None if keep_ratios is None else tuple(float(r) for r in keep_ratios)
        self.ratio_weight = ratio_weight
        self.token_weight = token_weight

    def wants_teacher_tokens(self, aux: 'DynamicViTAux') -> bool:
        """The tokens are compared in place, so only a masked (training-mode) pass uses them; at
        keep ratio 1.0 (the start of a schedule) the model trains dense, without token targets."""
        return self.token_weight > 0 and aux.execution == 'masked'

    def forward(
            self,
            logits: torch.Tensor,
            aux: 'DynamicViTAux',
            target: torch.Tensor,
            teacher_logits: Optional[torch.Tensor] = None,
            teacher_tokens: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Computes the loss.

        Args:
            logits: Student logits ``[B, K]``.
            aux: The student's ``DynamicViTAux`` from a training-mode forward.
            target: Class indices ``[B]`` (or soft targets for a soft criterion).
            teacher_logits: Dense teacher logits ``[B, K]``.
            teacher_tokens: Dense teacher's final normalised tokens ``[B, L_t, C]``; its last
                N tokens are the patches.

        Returns:
            The total loss and its detached parts by name.
        """
        ratios = aux.keep_ratio if self.keep_ratios is None else self.keep_ratios
        parts = {'ce': self.base_criterion(logits, target), 'ratio': ratio_loss(aux.decisions, ratios)}
        total = parts['ce'] + self.ratio_weight * parts['ratio']
        if teacher_logits is not None:
            parts['kl'] = distillation_kl(logits, teacher_logits, self.temperature)
            total = total + self.distill_weight * parts['kl']
        if teacher_tokens is not None:
            if aux.execution != 'masked':
                raise ValueError('token distillation needs the training-mode (masked) forward, '
                                 'where tokens stay in their original positions')
            n = aux.num_patches
            parts['token'] = token_distillation_loss(aux.features[:, -n:], teacher_tokens[:, -n:], aux.decisions[-1])
            total = total + self.token_weight * parts['token']
        return total, {k: v.detach() for k, v in parts.items()}


class DynamicVisionTransformer(StagedTokenViT):
    """timm ``VisionTransformer`` with DynamicViT token sparsification.

    Args:
        prune_loc: Indices of the blocks before which tokens are pruned (one keep predictor
            each, so fixed once built).
        keep_ratio: Fraction of the original patches kept after each stage: a float rho means
            (rho, rho^2, rho^3, ...), a sequence gives one value per stage.
        mode: Inference selection, ``'topk'`` (fixed count per stage) or ``'threshold'``.
        threshold: Keep probability a token needs in threshold mode (float or one per stage).
        token_order: Order of the kept tokens in top-k mode, ``'score'`` (descending score, as the
            released DynamicViT code does; one kernel fewer per stage) or ``'position'`` (raster order).
        **kwargs: ``stem`` ('patch' or 'conv', see ``TokenSparseViT``) and timm's
            ``VisionTransformer`` arguments.
    """
    spec = spec_of('DynamicViT')
    sparsity_args = ('prune_loc', 'keep_ratio', 'mode', 'threshold', 'token_order')
    fixed_settings = ('prune_loc',)
    loc_arg = 'prune_loc'
    attn_layer = PolicyAttention

    prune_loc = setting('prune_loc', 'Blocks before which tokens are pruned (fixed: one keep predictor each).')
    mode = setting('mode', "Inference selection: 'topk' or 'threshold'.")
    threshold = setting('threshold', 'Per-stage keep-probability threshold of threshold mode.')
    token_order = setting('token_order', "Order of kept tokens in top-k mode: 'position' or 'score'.")

    def __init__(
            self,
            *,
            prune_loc: Sequence[int] = (3, 6, 9),
            keep_ratio: Union[float, Sequence[float]] = 0.7,
            mode: Mode = 'topk',
            threshold: Union[float, Sequence[float]] = 0.5,
            token_order: TokenOrder = 'score',
            **kwargs: Any,
    ) -> None:
        super().__init__(family_args={'prune_loc': [int(i) for i in prune_loc]}, **kwargs)
        self._update_sparsity(dict(prune_loc=prune_loc, keep_ratio=keep_ratio, mode=mode, threshold=threshold,
                                   token_order=token_order))
        self.score_predictor = nn.ModuleList([KeepPredictor(self.embed_dim) for _ in self.prune_loc])
        for predictor in self.score_predictor:
            predictor.apply(init_weights_vit_timm)

    # ---- sparsity settings (changeable on a built model) ----
    def _stage_ratios(self, value: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
        """A float rho: (rho, rho^2, ...), decisions being cumulative; a sequence must not increase."""
        return resolve_keep_ratio(value, num_stages)

    def _checked_family_settings(self, settings: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        num_stages = len(settings['prune_loc'])
        settings['threshold'] = _resolve_threshold(given.get('threshold', settings.get('threshold')), num_stages)
        mode = given.get('mode', settings.get('mode'))
        if mode not in ('topk', 'threshold'):
            raise ValueError(f"mode must be 'topk' or 'threshold', got {mode!r}")
        if mode == 'threshold':
            bad = [i for i, b in enumerate(self.blocks) if not is_packable(b)]
            if bad:
                raise ValueError(f'threshold mode packs images and needs timm Block blocks; blocks {bad} are '
                                 f'{type(self.blocks[bad[0]]).__name__}')
        order = given.get('token_order', settings.get('token_order'))
        if order not in ('position', 'score'):
            raise ValueError(f"token_order must be 'position' or 'score', got {order!r}")
        return {**settings, 'mode': mode, 'token_order': order}

    def dense_settings(self) -> Dict[str, Any]:
        return dict(keep_ratio=1.0, mode='topk')  # threshold mode would still drop tokens

    def is_dense(self) -> bool:
        return super().is_dense() and self.mode == 'topk'

    def sparsity_text(self) -> str:
        if self.mode == 'threshold':
            return f'threshold {self.level_text(self.threshold)} (mode threshold)'
        return super().sparsity_text()

    def static_graph_problem(self) -> Optional[str]:
        if self.mode == 'threshold':
            return ('threshold mode keeps a different number of tokens per image (data-dependent shapes, packed '
                    'sequences); use top-k mode (mode="topk", --keep-ratio) for a static graph')
        return None

    def training_objective(self, config: ObjectiveConfig) -> DynamicViTLoss:
        """Cross-entropy, the keep-ratio loss, logit and token distillation (paper weights 1, 2, 0.5, 0.5)."""
        return DynamicViTLoss(base_criterion=config.criterion(), **config.distillation())

    def sparse_modules(self) -> List[nn.Module]:
        return list(self.score_predictor)

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

    # ---- forward ----
    def _forward_masked(self, x: torch.Tensor, decisions: Optional[Sequence[torch.Tensor]]) -> DynamicViTAux:
        """All tokens stay; dropped ones are hidden as keys. Gumbel decisions unless given."""
        B, L, _ = x.shape
        P = self.num_prefix_tokens
        N = L - P
        policy = x.new_ones(B, N)
        bias = None
        aux = _new_aux(x, len(self.blocks), len(self.prune_loc), N, 'masked', self.keep_ratio)
        for i, block in enumerate(self.blocks):
            s = self.stage_of_block(i)
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

    def _forward_gathered(self, x: torch.Tensor, want_aux: bool = True) -> Tuple[torch.Tensor, Optional[DynamicViTAux]]:
        """Top-k per image, gathered: later blocks run on ``[B, P + k, C]``. Without ``want_aux``
        only the selection itself runs (no keep probabilities, decisions or positions)."""
        B, L, _ = x.shape
        P = self.num_prefix_tokens
        N = L - P
        index = torch.arange(L, device=x.device).expand(B, L) if want_aux else None  # original index of each token
        decisions, keep_probs = [], []
        tokens_per_block, predictor_tokens = [], [0] * len(self.prune_loc)  # the same for every image
        for i, block in enumerate(self.blocks):
            s = self.stage_of_block(i)
            if s is not None:
                n_cur, k = x.shape[1] - P, min(self.num_keep(s, N), x.shape[1] - P)
                if k < n_cur:
                    # [B, P + n_cur]: the keep predictor's ranking of the patches, the prefix tokens above all
                    score = self.score_predictor[s].keep_scores(x, P)
                    top = score.topk(P + k, dim=1, sorted=self.token_order == 'score').indices  # prefix first
                    if self.token_order == 'position':
                        top = top.sort(dim=1).values
                    x = gather_tokens(x, top)
                    if want_aux:  # the keep probability is the sigmoid of the score
                        probs = score[:, P:].sigmoid().to(x.dtype)
                        keep_probs.append(x.new_zeros(B, N).scatter_(1, index[:, P:] - P, probs))
                        index = index.gather(1, top)
                    predictor_tokens[s] = P + n_cur
                elif want_aux:
                    keep_probs.append(x.new_zeros(B, N))
                if want_aux:
                    decisions.append(x.new_zeros(B, N).scatter_(1, index[:, P:] - P, 1.0))
            tokens_per_block.append(x.shape[1])
            x = self._block(block, x)
        x = self.norm(x)
        if not want_aux:
            return x, None
        return x, DynamicViTAux(
            decisions=decisions,
            keep_probs=keep_probs,
            tokens_per_block=torch.tensor(tokens_per_block, device=x.device).expand(B, -1),
            predictor_tokens=torch.tensor(predictor_tokens, device=x.device).expand(B, -1),
            num_patches=N,
            token_index=index,
            features=x,
            execution='gathered',
            keep_ratio=self.keep_ratio,
        )

    def _forward_packed(self, x: torch.Tensor) -> DynamicViTAux:
        """Threshold per image; after the first stage images are packed into ``[1, T, C]``."""
        B, L, C = x.shape
        P = self.num_prefix_tokens
        N = L - P
        keep = torch.ones(B, N, dtype=torch.bool, device=x.device)  # kept patches, original positions
        prefix = keep.new_ones(B, P)
        lengths = None
        aux = _new_aux(x, len(self.blocks), len(self.prune_loc), N, 'packed', self.keep_ratio)
        for i, block in enumerate(self.blocks):
            s = self.stage_of_block(i)
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

    def _forward_tokens(
            self,
            x: torch.Tensor,
            want_aux: bool,
            decisions: Optional[Sequence[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, Optional[DynamicViTAux]]:
        """Embeds and runs the blocks with token sparsification.

        Args:
            x: Images ``[B, C, H, W]``.
            want_aux: Make the aux; top-k mode skips it when not wanted (the other executions
                always make it: their token mask pools the output).
            decisions: Optional fixed keep decisions, one ``[B, N]`` 0/1 tensor per stage; the
                masked (training-style) computation is then run with them in any mode.

        Returns:
            Normalised tokens ``[B, L, C]``: all tokens in training/with ``decisions``, the kept
            ones in top-k mode, zero-padded kept tokens in threshold mode (see
            ``aux.token_mask``); and the aux (None in top-k mode when not wanted).
        """
        tokens = self._embed(x)
        if decisions is not None:
            if len(decisions) != len(self.prune_loc):
                raise ValueError(f'decisions has {len(decisions)} entries for {len(self.prune_loc)} stages')
            aux = self._forward_masked(tokens, decisions)
        elif self.training and any(r < 1.0 for r in self.keep_ratio):
            aux = self._forward_masked(tokens, None)
        elif self.mode == 'topk' or self.training:  # keep ratio 1.0 trains the dense model
            features, aux = self._forward_gathered(tokens, want_aux)
            if aux is None:  # all returned tokens are valid: nothing else is needed to pool them
                return features, None
        else:
            aux = self._forward_packed(tokens)
        aux.grid = self._patch_grid(x)
        return aux.features, aux

    # ---- MACs ----
    def _selection_macs(self, aux: DynamicViTAux) -> torch.Tensor:
        """The keep predictors on the tokens each scored (the gathered path's last layer is one wide)."""
        macs, outputs = 0, 1 if aux.execution == 'gathered' else 2
        for s, predictor in enumerate(self.score_predictor):
            tokens = aux.predictor_tokens[:, s].long()
            macs = macs + predictor.macs(tokens, (tokens > 0).long(), outputs)
        return macs


def _new_aux(x: torch.Tensor, depth: int, num_stages: int, num_patches: int, execution: str,
             keep_ratio: Tuple[float, ...]) -> DynamicViTAux:
    B = x.shape[0]
    return DynamicViTAux(
        decisions=[],
        keep_probs=[],
        tokens_per_block=torch.zeros(B, depth, dtype=torch.long, device=x.device),
        predictor_tokens=torch.zeros(B, num_stages, dtype=torch.long, device=x.device),
        num_patches=num_patches,
        execution=execution,
        keep_ratio=keep_ratio,
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

    A dense checkpoint fills the backbone; the keep predictors keep their fresh initialisation
    (and ``model.untrained_sparse`` says so).
    Key layouts that fit neither raise a ValueError naming the keys.
    """
    state_dict = vit_checkpoint_filter_fn(state_dict, model)
    predictors = [k for k in model.state_dict() if k.startswith('score_predictor.')]
    model._sparse_from_checkpoint(found=all(k in state_dict for k in predictors))
    state_dict = fill_missing(state_dict, model, ('score_predictor.',))
    # timm drops a classifier of another size and adapts the input channels after this filter
    check_state_dict(state_dict, model, ignore=('head.',), any_shape=first_conv_keys(model))
    return state_dict


# _create_*(variant, model_args, pretrained, **kwargs): the variant built with its family's checkpoint filter
_create_dynamic_vit = partial(build_token_vit, DynamicVisionTransformer, checkpoint_filter_fn)


_cfg = partial(vit_cfg, spec=DynamicVisionTransformer.spec, classifier='head')


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


_DEIT_NOTE = 'timm\'s DeiT ImageNet-1k weights as the backbone; keep predictors untrained (fine-tune first)'

default_cfgs = generate_default_cfgs({
    **{f'{arch}.official_r07_in1k': _official_cfg(url) for arch, url in _OFFICIAL.items()},
    **deit_cfgs('dynamicvit', _cfg, _DEIT_NOTE),  # DeiT's backbone; keep predictors untrained
    **tiny_test_cfgs(('test_dynamicvit', 'test_dynamicvit2'), _cfg),
    **pico_cfgs('dynamicvit_pico_patch4_28', _cfg),  # trained by the zoo (weights/)
})


@register_model
def dynamicvit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Tiny (192 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_tiny_patch16_224', model_args, pretrained, **kwargs)


@register_model
def dynamicvit_256_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on the DynamicViT paper's DeiT-256 (256 wide, 4 heads, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=256, depth=12, num_heads=4, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_256_patch16_224', model_args, pretrained, **kwargs)


@register_model
def dynamicvit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Small (384 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_small_patch16_224', model_args, pretrained, **kwargs)


@register_model
def dynamicvit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on DeiT-Base (768 wide, 12 blocks), pruning before blocks 3, 6, 9."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, prune_loc=(3, 6, 9), keep_ratio=0.7)
    return _create_dynamic_vit('dynamicvit_base_patch16_224', model_args, pretrained, **kwargs)


@register_model
def dynamicvit_pico_patch4_28(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """DynamicViT on the zoo's 28-px ViT (patch 4: 49 patches; 96 wide, 6 blocks, 3 heads, convolutional
    stem). By default it prunes before blocks 1, 3, 5 at keep ratio 0.5 (49 -> 24 -> 12 -> 6 patches)."""
    model_args = pico_28_args(prune_loc=(1, 3, 5), keep_ratio=0.5)
    return _create_dynamic_vit('dynamicvit_pico_patch4_28', model_args, pretrained, **kwargs)


@register_model
def test_dynamicvit(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """Tiny DynamicViT for tests: 32 px, patch 4 (64 patches), 32 wide, 4 blocks, class token."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        prune_loc=(1, 2, 3), keep_ratio=0.7)
    return _create_dynamic_vit('test_dynamicvit', model_args, pretrained, **kwargs)


@register_model
def test_dynamicvit2(pretrained: bool = False, **kwargs: Any) -> DynamicVisionTransformer:
    """Tiny DynamicViT for tests, DeiT-III style: no class token, a register token, average
    pooling, LayerScale, qk-norm, position embedding without prefix tokens."""
    model_args = dict(
        img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
        class_token=False, reg_tokens=1, global_pool='avg', no_embed_class=True, init_values=1e-5,
        qk_norm=True, prune_loc=(1, 3), keep_ratio=0.6)
    return _create_dynamic_vit('test_dynamicvit2', model_args, pretrained, **kwargs)
