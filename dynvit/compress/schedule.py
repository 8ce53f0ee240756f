"""Gradual pruning: Zhu & Gupta's cubic sparsity ramp (To prune, or not to prune; 2017),
arXiv:1710.01878, and an iterative prune -> fine-tune driver."""
from typing import Any, Dict

import torch.nn as nn

from ._select import Include, prunable_layers
from .magnitude import magnitude_prune

__all__ = ['cubic_sparsity', 'IterativePruner']


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: ``s_t = s_f + (s_i - s_f) (1 - t / n)^3``.

    Sparsity rises fast at first, while many redundant weights remain, then levels off at
    ``final``.

    Args:
        step: t; clamped to [0, total_steps].
        total_steps: n pruning steps (0: the final sparsity at once).
        final: s_f, in [0, 1).
        initial: s_i, in [0, final].

    Returns:
        The sparsity at step t.
    """
    if not 0.0 <= initial <= final < 1.0:
        raise ValueError(f'need 0 <= initial <= final < 1, got initial={initial}, final={final}')
    if total_steps < 0:
        raise ValueError(f'total_steps must be >= 0, got {total_steps}')
    if total_steps == 0:
        return float(final)
    t = min(max(step, 0), total_steps) / total_steps
    return float(final + (initial - final) * (1.0 - t) ** 3)


class IterativePruner:
    """Prune -> fine-tune cycles along the cubic schedule (Han et al.; Zhu & Gupta).

    Each ``step()`` raises the pruned fraction to the schedule's next value by magnitude
    among the weights still present; fine-tune between steps::

        pruner = IterativePruner(model, final_amount=0.8, steps=10)
        for _ in range(pruner.steps):
            pruner.step()
            fine_tune(model, epochs=1)   # the masks keep pruned weights at zero
        remove_masks(model)

    Args:
        model: The model to prune.
        final_amount: Fraction of the selected weights pruned after the last step.
        steps: Number of pruning steps.
        scope: ``'global'`` or ``'layer'``, as for ``magnitude_prune``.
        initial_amount: The schedule's starting sparsity (reached at step 0, not applied).
        include, exclude: Which layers, see ``prunable_layers``.
    """

    def __init__(
            self,
            model: nn.Module,
            final_amount: float,
            steps: int,
            scope: str = 'global',
            initial_amount: float = 0.0,
            include: Include = None,
            exclude: Include = None,
    ) -> None:
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f'steps must be a positive integer, got {steps!r}')
        cubic_sparsity(0, steps, final_amount, initial_amount)  # validates the amounts
        if scope not in ('global', 'layer'):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.model = model
        self.final_amount = float(final_amount)
        self.initial_amount = float(initial_amount)
        self.steps = int(steps)
        self.scope = scope
        names = list(prunable_layers(model, include, exclude))
        if not names:
            raise ValueError('no nn.Linear / nn.Conv2d layer selected for pruning; check include/exclude')
        self._include = frozenset(names)  # fixed at construction: the same layers every step
        self.step_count = 0
        self.amount = 0.0

    @property
    def done(self) -> bool:
        """Whether the final sparsity has been reached."""
        return self.step_count >= self.steps

    def step(self) -> float:
        """Prunes to the next value of the schedule (nothing more once done); returns it."""
        if not self.done:
            self.step_count += 1
            self.amount = cubic_sparsity(self.step_count, self.steps, self.final_amount, self.initial_amount)
            magnitude_prune(self.model, self.amount, self.scope,
                            include=lambda n, m: n in self._include)
        return self.amount

    def state_dict(self) -> Dict[str, Any]:
        """Progress, to resume with ``load_state_dict`` (the masks are in the model's state dict)."""
        return dict(step_count=self.step_count, amount=self.amount)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step_count = int(state['step_count'])
        self.amount = float(state['amount'])
