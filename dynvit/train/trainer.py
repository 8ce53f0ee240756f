"""Fine-tuning a dynvit model on a dataset: the method's loss, a sparsity schedule, AdamW with a
warmed-up cosine learning rate, per-epoch validation with MACs, atomic resumable checkpoints,
and DistributedDataParallel under ``torchrun``.

A run writes into ``out_dir``: ``train_state.safetensors`` (weights, optimizer, scheduler,
progress and random states; rewritten every epoch and on Ctrl-C), ``best.safetensors`` (the
best validation top-1 as a self-describing dynvit file with class names and preprocessing)
and ``log.jsonl`` (one line per epoch). Only rank 0 writes.
"""
import json
from contextlib import nullcontext
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..compress.autoprune import SCORES_SUFFIX, autoprune_layers, autoprune_penalty
from ..compress.magnitude import sparsity as weight_sparsity
from ..compress import masked_layers
from ..data.transforms import SeededAugmentation
from ..hub import save_pruned
from ..losses import ObjectiveConfig
from ..models import DynamicModel
from .checkpoint import load_training_state, read_training_progress, save_training_state
from .interrupt import StopRequest
from .teacher import ExternalTeacher

__all__ = ['TrainConfig', 'Trainer', 'evaluate', 'EpochBatchSampler']

STATE_FILE = 'train_state.safetensors'
WARMUP_CAP = 0.2  # the learning-rate warm-up takes at most this fraction of the run
# settings a resumed run may change without changing what it computes
_FREE_SETTINGS = ('num_workers',)
BEST_FILE = 'best.safetensors'


@dataclass
class TrainConfig:
    """Settings of a fine-tuning run.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Global batch size (split over the processes under torchrun).
        lr: Peak learning rate of the backbone and head (AdamW).
        sparse_lr: Peak learning rate of the model's sparse modules (keep predictors, channel
            gates: ``model.sparse_modules()``) (None: ``lr``).
        weight_decay: AdamW weight decay (not on norms, biases, tokens).
        warmup_epochs: Linear warm-up of the learning rate, then cosine decay to ``min_lr_ratio * lr``;
            at most ``WARMUP_CAP`` of the run (a short run is not all warm-up).
        min_lr_ratio: Final learning rate as a fraction of the peak.
        label_smoothing: Cross-entropy label smoothing.
        sparsity_start: Value of the model's sparsity knob (``model.sparsity_knob``: keep ratio,
            density) at the start of the sparsity schedule.
        sparsity_warmup_epochs: Epochs over which the knob goes linearly from ``sparsity_start``
            to the model's configured value (0: target from the start).
        gate_warmup_epochs: Epochs in which only the sparse modules (gates, keep predictors) train
            (backbone frozen), before joint training.
        distill: Distil from the dense teacher (a frozen copy of the starting model with sparsity off).
        distill_weight: Weight of the soft-target KL term (Hinton et al., arXiv:1503.02531).
        distill_temperature: Its softening temperature T (the term is scaled by T^2).
        l1_weight: Channel gates: weight of the L1 term on their saliencies.
        autoprune_weight: AutoPrune: weight of the regulariser on the scores (the kept fraction of
            the scored weights); needs ``dynvit.compress.apply_autoprune`` on the model first.
        autoprune_lr: AutoPrune: learning rate of the scores (no weight decay on them).
        amp: 'auto' (bf16 autocast on CUDA, off on CPU), 'off', 'bf16' or 'fp16' (CUDA, with a grad scaler).
        grad_clip: Clip the gradient norm to this (None: no clipping).
        seed: Seed of the data order, the augmentation and the model's randomness.
        num_workers: DataLoader workers.
        train_kwargs: Overrides for timm's training transform (informational; the caller builds the datasets).
    """
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    sparse_lr: Optional[float] = None
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    sparsity_start: float = 1.0
    sparsity_warmup_epochs: float = 0.0
    gate_warmup_epochs: int = 0
    distill: bool = True
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    l1_weight: float = 1e-3
    autoprune_weight: float = 0.0
    autoprune_lr: float = 1e-2
    amp: str = 'auto'
    grad_clip: Optional[float] = None
    seed: int = 0
    num_workers: int = 0
    train_kwargs: Dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f'epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}')
        if self.lr <= 0 or (self.sparse_lr is not None and self.sparse_lr <= 0):
            raise ValueError('learning rates must be positive')
        if self.amp not in ('auto', 'off', 'bf16', 'fp16'):
            raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {self.amp!r}")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise ValueError(f'distill_weight must be >= 0 and distill_temperature > 0, got {self.distill_weight} '
                             f'and {self.distill_temperature}')
        if self.autoprune_weight < 0 or self.autoprune_lr <= 0:
            raise ValueError(f'autoprune_weight must be >= 0 and autoprune_lr > 0, got {self.autoprune_weight} '
                             f'and {self.autoprune_lr}')
        if not 0.0 < self.sparsity_start <= 1.0:
            raise ValueError(f'sparsity_start must be in (0, 1], got {self.sparsity_start}')

    @property
    def lr_warmup_epochs(self) -> float:
        """The warm-up that runs: ``warmup_epochs``, at most ``WARMUP_CAP`` of the run."""
        return min(self.warmup_epochs, WARMUP_CAP * self.epochs)

    def changes_from(self, saved: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
        """``{setting: (saved value, this value)}`` for the settings that differ from ``saved`` (a
        run's recorded ``asdict`` config) and change what a resumed run computes."""
        now = json.loads(json.dumps(asdict(self)))  # as recorded: tuples are lists
        return {k: (saved.get(k), v) for k, v in now.items() if k not in _FREE_SETTINGS and saved.get(k, v) != v}

    def objective(self) -> ObjectiveConfig:
        """The settings the model's training objective is built from."""
        return ObjectiveConfig(label_smoothing=self.label_smoothing, distill_weight=self.distill_weight,
                               distill_temperature=self.distill_temperature, l1_weight=self.l1_weight)


class SettingsChanged(ValueError):
    """A resume with settings other than the saved run's; ``changes``: ``{setting: (saved, now)}``."""

    def __init__(self, path: Path, changes: Dict[str, Tuple[Any, Any]]) -> None:
        listed = ', '.join(f'{k} {a!r} (now {b!r})' for k, (a, b) in changes.items())
        super().__init__(f'{path} was saved with {listed}: resuming with other settings does not reproduce the '
                         f'uninterrupted run; use the saved ones, or allow_changes=True to continue with these')
        self.changes = changes


# ---- the schedule and the teacher ----

def _schedule_level(target: Sequence[float], start: float, frac: float) -> Tuple[float, ...]:
    """The sparsity level a fraction ``frac`` of the way from ``start`` to ``target``."""
    return tuple(start + (t - start) * min(1.0, frac) if t < start else t for t in target)


def _dense_teacher(model: DynamicModel) -> nn.Module:
    teacher = model.dense_copy()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def _teacher_forward(teacher: nn.Module, x: torch.Tensor, want_tokens: bool) -> Dict[str, torch.Tensor]:
    """The teacher's logits (and output tokens, when wanted and it has them) as loss keywords."""
    if isinstance(teacher, ExternalTeacher):
        return dict(teacher_logits=teacher(x))
    tokens = teacher.forward_features(x)
    out = dict(teacher_logits=teacher.forward_head(tokens))
    if want_tokens:
        out['teacher_tokens'] = tokens
    return out


# ---- data order ----

class EpochBatchSampler(Sampler):
    """Per epoch a permutation drawn from (seed, epoch), cut into global batches (the last
    incomplete one dropped), each split across ``world`` processes; ``start`` skips the first
    batches (a resumed epoch). The same global batches come out for any number of processes."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f'the batch size {global_batch} must be divisible by the {world} processes')
        if n < global_batch:
            fits = n - n % world
            raise ValueError(f'the training set has {n} images, fewer than one batch of {global_batch}: lower the '
                             f'batch size (--batch-size {fits} or less)' if fits else
                             f'the training set has {n} images, fewer than one per process ({world})')
        self.n, self.global_batch, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.global_batch // self.world
        for b in range(self.start, self.n // self.global_batch):
            batch = perm[b * self.global_batch:(b + 1) * self.global_batch]
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


# ---- evaluation ----

@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             autocast: Optional[Callable] = None, progress: bool = False) -> Dict[str, float]:
    """Top-1, top-5 (for 6 classes or more), mean loss, mean MACs per image and the fraction
    saved, over ``loader`` (summed over all processes when distributed); ``progress`` shows a
    tqdm bar."""
    model.eval()
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # n, top1, top5, loss, macs, dense, kept
    num_classes = None
    for x, y in tqdm(loader, desc='eval', unit='batch', disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with (autocast or nullcontext)():
            logits, aux = model(x, return_aux=True)
        _check_targets(y, logits.shape[1])
        num_classes = logits.shape[1]
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        sums += torch.stack([
            torch.tensor(float(len(y)), device=device, dtype=torch.float64),
            (top[:, 0] == y).sum().double(),
            (top == y[:, None]).any(1).sum().double(),
            F.cross_entropy(logits.double(), y, reduction='sum'),  # float64: no summation-order rounding
            aux.macs.double().sum().to(device),
            torch.tensor(float(aux.dense_macs) * len(y), device=device, dtype=torch.float64),
            aux.keep_rate.sum().to(device),
        ])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
    n = max(sums[0].item(), 1.0)
    metrics = dict(top1=sums[1].item() / n, top5=sums[2].item() / n, loss=sums[3].item() / n,
                   mean_macs=sums[4].item() / n, saved_fraction=1.0 - sums[4].item() / max(sums[5].item(), 1.0),
                   keep_rate=sums[6].item() / n, images=int(sums[0].item()))
    if num_classes is not None and num_classes < 6:  # top-5 of 5 classes or fewer is always 1
        del metrics['top5']
    return metrics


def _learning(modules: Sequence[nn.Module]) -> bool:
    """Whether this step's gradients reach the parameters of ``modules``."""
    return any(p.grad is not None and bool(p.grad.any()) for m in modules for p in m.parameters())


def _check_targets(y: torch.Tensor, num_classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0].item()
        raise ValueError(f'label {bad} is out of range for a model with {num_classes} classes '
                         f'(labels must be 0..{num_classes - 1})')


# ---- the trainer ----

class Trainer:
    """Trains ``model`` on ``train_set`` and validates on ``val_set`` every epoch.

    Args:
        model: A dynvit model (``DynamicModel``) whose sparsity settings are the targets.
        train_set, val_set: Datasets of (image tensor, label) with the model's preprocessing.
        config: ``TrainConfig``.
        out_dir: Where checkpoints and the log go ('' keeps nothing on disk).
        class_names: Stored with the exported best model.
        device: Default: CUDA (the local rank's GPU under torchrun) if available, else CPU.
        progress: Show a tqdm progress bar (rank 0).
        log_epochs: Print one line per epoch: training and validation metrics (rank 0).
        teacher: Distil from this model instead of the dense copy of ``model`` (an
            ``ExternalTeacher``, e.g. a CNN for a ViT trained from scratch; logits only).
    """

    def __init__(self, model: nn.Module, train_set: Dataset, val_set: Optional[Dataset], config: TrainConfig,
                 out_dir: str = '', class_names: Optional[Sequence[str]] = None,
                 device: Optional[torch.device] = None, progress: bool = True,
                 teacher: Optional[nn.Module] = None, log_epochs: bool = True) -> None:
        config.check()
        self.config, self.out_dir, self.progress = config, Path(out_dir) if out_dir else None, progress
        self.log_epochs = log_epochs
        self.class_names = list(class_names) if class_names is not None else None
        self.rank, self.world, local_rank = _distributed_setup()
        if device is None:
            device = torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
        self.device = torch.device(device)
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        if not isinstance(model, DynamicModel):
            raise TypeError(f'{type(model).__name__} is not a dynvit model (DynamicModel): the trainer needs its '
                            f'training objective and sparsity knob')
        torch.manual_seed(config.seed + self.rank)  # the model's own randomness (Gumbel noise, dropout)
        self.model = model.to(self.device)
        self.target = model.sparsity_level
        self.sparse_params = {id(p) for m in model.sparse_modules() for p in m.parameters()}
        if config.gate_warmup_epochs > 0 and not self.sparse_params:
            raise ValueError(f'gate_warmup_epochs trains only the sparse modules, and {model.family} has none '
                             f'(it selects by a rule); set it to 0')
        if teacher is not None and not config.distill:
            raise ValueError('a teacher was given but config.distill is False')
        self.teacher = (teacher.to(self.device) if teacher is not None
                        else _dense_teacher(model) if config.distill else None)
        self.loss_fn = model.training_objective(config.objective())
        self.autoprune = bool(autoprune_layers(model))
        if config.autoprune_weight > 0 and not self.autoprune:
            raise ValueError('autoprune_weight > 0 needs AutoPrune scores on the model (dynvit.compress.apply_autoprune)')
        self.train_set = SeededAugmentation(train_set, config.seed)
        self.sampler = EpochBatchSampler(len(train_set), config.batch_size, config.seed, self.rank, self.world)
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=config.num_workers,
                                 pin_memory=self.device.type == 'cuda',
                                 generator=torch.Generator().manual_seed(config.seed))
        self.val_loader = None
        if val_set is not None:
            val_sampler = _ShardSampler(len(val_set), self.rank, self.world)
            self.val_loader = DataLoader(val_set, batch_size=max(1, config.batch_size // self.world),
                                         sampler=val_sampler, num_workers=config.num_workers,
                                         generator=torch.Generator().manual_seed(config.seed))
        self.steps_per_epoch = len(train_set) // config.batch_size
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.autocast, self.scaler = self._amp()
        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=True)
        self.epoch, self.step, self.best_top1 = 0, 0, -1.0
        self.changed_settings: Dict[str, Tuple[Any, Any]] = {}  # by a resume with allow_changes
        self._saved_at: Optional[str] = None  # where the last saved state stands (for messages)
        self.history: List[Dict[str, Any]] = []
        self._sums = torch.zeros(5, dtype=torch.float64)  # this epoch so far: images, correct, loss, kept, saved

    # -- setup pieces --
    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with four groups: backbone / predictors-or-gates, each with and without weight decay;
        AutoPrune scores (if any) in a fifth, without weight decay."""
        groups = []
        for tag, sparse, lr in (('backbone', False, self.config.lr),
                                ('sparse', True, self.config.sparse_lr or self.config.lr)):
            params = _Params([(n, p) for n, p in self.model.named_parameters()
                              if (id(p) in self.sparse_params) == sparse and not n.endswith(SCORES_SUFFIX)])
            for g in param_groups_weight_decay(params, self.config.weight_decay, _no_decay(self.model)):
                if g['params']:
                    groups.append({**g, 'lr': lr, 'name': f'{tag}_{"decay" if g["weight_decay"] else "no_decay"}'})
        scores = [p for n, p in self.model.named_parameters() if n.endswith(SCORES_SUFFIX)]
        if scores:
            groups.append(dict(params=scores, weight_decay=0.0, lr=self.config.autoprune_lr, name='autoprune'))
        return torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _lr_factor(self, step: int) -> float:
        total = self.config.epochs * self.steps_per_epoch
        warmup = self.config.lr_warmup_epochs * self.steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1.0, total - warmup)
        m = self.config.min_lr_ratio
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _amp(self):
        amp = self.config.amp
        if amp == 'auto':
            amp = 'bf16' if self.device.type == 'cuda' else 'off'
        if amp == 'off':
            return None, None
        if amp == 'fp16' and self.device.type != 'cuda':
            raise ValueError('fp16 mixed precision needs a CUDA device; use amp="bf16" or "off" on the CPU')
        dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
        scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
        return (lambda: torch.autocast(self.device.type, dtype=dtype)), scaler

    # -- state --
    def _progress_state(self) -> Dict[str, Any]:
        return dict(epoch=self.epoch, step=self.step, best_top1=self.best_top1, history=self.history,
                    epoch_sums=self._sums.tolist(), config=asdict(self.config), world=self.world,
                    untrained_sparse=self.model.untrained_sparse, sparsity_target=list(self.target))

    def save_state(self) -> None:
        """Writes ``train_state.safetensors`` atomically (rank 0)."""
        if self.rank == 0 and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_training_state(str(self.out_dir / STATE_FILE), self.model, self.optimizer, self.scheduler,
                                self._progress_state())
            self._saved_at = f'epoch {self.epoch + 1}/{self.config.epochs}, step {self.step}/{self.steps_per_epoch}'

    def resume(self, path: Optional[str] = None, allow_changes: bool = False) -> bool:
        """Continues from ``path`` (default: this run's ``train_state.safetensors``); False if there is none.

        Raises:
            SettingsChanged: The run was saved with other settings (``TrainConfig.changes_from``, and
                the target sparsity ``'sparsity_target'``): continuing with these would not reproduce
                the uninterrupted run. ``allow_changes`` continues with the new ones (e.g. more
                epochs for a finished run).
        """
        path = Path(path) if path else (self.out_dir / STATE_FILE if self.out_dir else None)
        if path is None or not path.is_file():
            return False
        saved = read_training_progress(str(path))
        changes = self.config.changes_from(saved.get('config', {}))
        target = saved.get('sparsity_target')
        if target is not None and tuple(float(v) for v in target) != tuple(self.target):
            changes['sparsity_target'] = (self.model.level_text(target), self.model.level_text(self.target))
        if changes and not allow_changes:
            raise SettingsChanged(path, changes)
        self.changed_settings = changes
        progress = load_training_state(str(path), self.model, self.optimizer, self.scheduler)
        self.epoch, self.step = progress['epoch'], progress['step']
        self.best_top1, self.history = progress['best_top1'], progress['history']
        self._sums = torch.tensor(progress['epoch_sums'], dtype=torch.float64)
        self.model.untrained_sparse = progress.get('untrained_sparse', self.model.untrained_sparse)
        if self.rank:  # every process continues its own random stream
            torch.manual_seed(self.config.seed + self.rank + 1_000 * (self.epoch * self.steps_per_epoch + self.step))
        return True

    @property
    def complete(self) -> bool:
        """Whether the run has trained all its epochs."""
        return self.epoch >= self.config.epochs

    # -- training --
    def fit(self, on_step: Optional[Callable[['Trainer'], None]] = None) -> List[Dict[str, Any]]:
        """Trains from the current position to ``config.epochs``; returns the per-epoch log.

        Ctrl-C (SIGINT) lets the running step finish, then saves the state and raises
        KeyboardInterrupt, so ``resume()`` continues exactly as the uninterrupted run would
        (weights, BatchNorm statistics, optimizer, random states); during validation it stops at
        once (nothing has changed). A KeyboardInterrupt raised by ``on_step`` saves the same way.
        A second Ctrl-C stops at once and keeps the last saved state.

        Args:
            on_step: Called after every optimizer step (for tests and custom logging).
        """
        with StopRequest() as stop:
            try:
                while self.epoch < self.config.epochs:
                    self._train_epoch(on_step, stop)
                    if self.step < self.steps_per_epoch:  # stopped between two steps
                        raise KeyboardInterrupt
                    metrics = self._end_epoch(stop)
                    if self.rank == 0 and self.log_epochs:
                        print(_epoch_line(metrics), flush=True)
                    if stop.requested and self.epoch < self.config.epochs:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                self._stopped(stop.forced)
                raise
        return self.history

    def _stopped(self, forced: bool) -> None:
        """Saves the state after an interruption at a step boundary (not after a forced one, which
        may have come mid-step) and says where the run stands, in the progress bar's numbering."""
        if not forced:
            self.save_state()
        if self.rank != 0 or self.out_dir is None:
            return
        where = f'epoch {self.epoch + 1}/{self.config.epochs}, step {self.step}/{self.steps_per_epoch}'
        if forced:
            print(f'stopped mid-step; the state saved at {self._saved_at or "no point yet"} stays in '
                  f'{self.out_dir / STATE_FILE}', file=sys.stderr, flush=True)
        else:
            print(f'stopped at {where}; state saved to {self.out_dir / STATE_FILE}', file=sys.stderr, flush=True)

    def _stop_here(self, stop: StopRequest) -> bool:
        """Whether to stop at this step boundary; under torchrun every process stops at the same step."""
        if self.world == 1:
            return stop.requested
        flag = torch.tensor([float(stop.requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _train_epoch(self, on_step: Optional[Callable[['Trainer'], None]], stop: StopRequest) -> None:
        """Trains the rest of this epoch, or up to the step boundary where a stop was requested."""
        cfg, model = self.config, self.model
        self.sampler.set_epoch(self.epoch, self.step)
        self.train_set.set_epoch(self.epoch)
        frozen = self.epoch < cfg.gate_warmup_epochs
        for p in model.parameters():  # gate warm-up: only the sparse modules learn at first
            p.requires_grad_(not frozen or id(p) in self.sparse_params)
        self.ddp.train()
        bar = self._bar()
        if self.step == 0:
            self._sums = torch.zeros(5, dtype=torch.float64)
        sums = self._sums
        for x, y in self.loader:
            if cfg.sparsity_warmup_epochs > 0:  # else the model stays at its target
                model.set_sparsity_level(self._scheduled_level(self.step))
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            _check_targets(y, model.num_classes)
            with (self.autocast or nullcontext)():
                logits, aux = self.ddp(x, return_aux=True)
                teacher_out = {} if self.teacher is None else \
                    _teacher_forward(self.teacher, x, self.loss_fn.wants_teacher_tokens(aux))
                loss, parts = self.loss_fn(logits, aux, y, **teacher_out)
                if self.autoprune and cfg.autoprune_weight > 0:
                    loss = loss + cfg.autoprune_weight * autoprune_penalty(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f'the loss is {loss.item()} at epoch {self.epoch} step {self.step}; '
                                         f'lower the learning rate or use amp="off"')
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if model.untrained_sparse is not None and _learning(model.sparse_modules()):
                model.untrained_sparse = None  # the predictors / gates learn: the exported model holds trained ones
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            with torch.no_grad():
                saved = 1.0 - aux.macs.double().mean().item() / aux.dense_macs
                sums += torch.tensor([len(y), (logits.argmax(1) == y).sum().item(), loss.item() * len(y),
                                      aux.keep_rate.sum().item(), saved * len(y)], dtype=torch.float64)
            if bar is not None:
                n = sums[0].item()
                bar.set_postfix(loss=f'{sums[2].item() / n:.3f}', acc=f'{sums[1].item() / n:.3f}',
                                keep=f'{sums[3].item() / n:.2f}', saved=f'{sums[4].item() / n:.1%}')
                bar.update()
            if on_step is not None:
                on_step(self)
            if self._stop_here(stop):
                break
        if bar is not None:
            bar.close()

    def _scheduled_level(self, step: int) -> Tuple[float, ...]:
        """The sparsity schedule's level at ``step`` of this epoch (the target once warmed up)."""
        warmup = self.config.sparsity_warmup_epochs
        if warmup <= 0:
            return tuple(self.target)
        frac = (self.epoch + step / self.steps_per_epoch) / warmup
        return _schedule_level(self.target, self.config.sparsity_start, frac)

    def _bar(self):
        if self.rank != 0 or not self.progress:
            return None
        return tqdm(total=self.steps_per_epoch, initial=self.step, desc=f'epoch {self.epoch + 1}/{self.config.epochs}',
                    leave=False, dynamic_ncols=True)

    def _end_epoch(self, stop: StopRequest) -> Dict[str, Any]:
        sums = self._sums.clone()
        if self.world > 1:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        n = max(sums[0].item(), 1.0)
        metrics = dict(epoch=self.epoch + 1, train_loss=sums[2].item() / n, train_acc=sums[1].item() / n,
                       train_keep_rate=sums[3].item() / n, train_saved_fraction=sums[4].item() / n,
                       lr=self.optimizer.param_groups[0]['lr'], train_sparsity=list(self._scheduled_level(self.step - 1)),
                       sparsity=list(self.target))
        if masked_layers(self.model):  # pruned weights (magnitude masks or AutoPrune scores)
            metrics['weight_sparsity'] = weight_sparsity(self.model).overall
        # validation, and the best model exported, at the target sparsity even while the schedule ramps
        self.model.set_sparsity_level(self.target)
        if self.val_loader is not None:
            with stop.immediate():  # validation changes no state: Ctrl-C may stop it at once
                val = evaluate(self.model, self.val_loader, self.device, self.autocast)
            metrics.update({f'val_{k}': v for k, v in val.items()})
        self.history.append(metrics)
        self.epoch, self.step = self.epoch + 1, 0
        if self.rank == 0 and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / 'log.jsonl', 'a') as f:
                f.write(json.dumps(metrics) + '\n')
            top1 = metrics.get('val_top1', metrics['train_acc'])
            if top1 > self.best_top1:
                self.best_top1 = top1
                self.export(str(self.out_dir / BEST_FILE), extra=dict(epoch=metrics['epoch'], top1=top1))
        self.save_state()
        return metrics

    def export(self, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
        """Writes the model as a self-describing dynvit file (sparsity, class names, preprocessing)."""
        model = self.model
        if self.class_names is not None:
            model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': self.class_names,
                                    'num_classes': model.num_classes}
        # pruned models (dynvit.compress) keep their shapes in the file and their masks made permanent
        save_pruned(model, path, extra={**(extra or {}), 'trained_with': asdict(self.config)})


class _Params(nn.Module):
    """A module view of (name, parameter) pairs, for timm's ``param_groups_weight_decay``."""

    def __init__(self, named: Sequence[Tuple[str, nn.Parameter]]) -> None:
        super().__init__()
        self._named = list(named)

    def named_parameters(self, *args, **kwargs):
        return iter(self._named)


def _no_decay(model: nn.Module) -> Sequence[str]:
    names = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
    return tuple(names)


class _ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...``: every image exactly once over all processes."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def _distributed_setup() -> Tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if torch.cuda.is_available() else 'gloo')
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', '0'))


def _epoch_line(m: Dict[str, Any]) -> str:
    line = (f'epoch {m["epoch"]}: train loss {m["train_loss"]:.4f} acc {m["train_acc"]:.4f} '
            f'keep {m["train_keep_rate"]:.3f} saved {m["train_saved_fraction"]:.1%}')
    if 'val_top1' in m:
        top5 = f' top-5 {m["val_top5"]:.4f}' if 'val_top5' in m else ''
        line += (f' | val top-1 {m["val_top1"]:.4f}{top5} GMACs {m["val_mean_macs"] / 1e9:.4f} '
                 f'saved {m["val_saved_fraction"]:.1%}')
    return line
