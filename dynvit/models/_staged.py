"""Token families that select at a few stages: before (or inside) the blocks ``stage_loc`` each image
keeps a fraction ``keep_ratio[s]`` of its patches, ``num_keep`` of them.

``StagedTokenViT`` holds what these families share: the stage locations under one name
(``stage_loc``; each family keeps the argument name its paper's code uses, ``loc_arg``, for its
constructor, its files and its attribute), the per-stage keep ratios, ``num_keep``, checking both
when they change together (``_checked_sparsity``), and which block starts which stage. A family
adds its own settings in ``_checked_family_settings``.
"""
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple, Union

from ._base import setting
from ._helpers import is_scalar
from ._token_vit import TokenSparseViT

__all__ = ['StagedTokenViT', 'block_indices', 'per_stage_ratio']


def per_stage_ratio(
        value: Union[float, Sequence[float]],
        num_stages: int,
        stages: str,
        meaning: str,
        name: str = 'keep_ratio',
) -> Tuple[float, ...]:
    """Per-stage fractions (keep ratios): a float is the same at every stage, a sequence gives one per stage.

    Args:
        value: The value given.
        num_stages: Stages of the model.
        stages: What the stages are, for messages ('selections (select_loc)').
        meaning: What a ratio is, for messages ('the fraction of patches ...').
        name: The setting's name, for messages.
    """
    ratios = (float(value),) * num_stages if is_scalar(value) else tuple(float(r) for r in value)
    if len(ratios) != num_stages:
        raise ValueError(f'{name} has {len(ratios)} values for {num_stages} {stages}')
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f'{name} is {meaning} and must be in (0, 1], got {list(ratios)}')
    return ratios


def block_indices(value: Sequence[int], name: str, lowest: int, depth: int, why: str = '') -> Tuple[int, ...]:
    """Checks increasing block indices in ``[lowest, depth)`` given as argument ``name``; ``why``
    (e.g. ' (the ranking needs ...)') follows the range in the message."""
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(i, bool) or int(i) != i for i in value):
            raise TypeError
        loc = tuple(int(i) for i in value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a sequence of block indices, got {value!r}') from None
    if not loc or list(loc) != sorted(set(loc)) or not lowest <= loc[0] <= loc[-1] < depth:
        raise ValueError(f'{name} must be increasing block indices in [{lowest}, {depth}){why}, got {list(loc)}')
    return loc


class StagedTokenViT(TokenSparseViT):
    """A ``TokenSparseViT`` that selects patch tokens at the stages ``stage_loc``.

    Class attributes a family sets:
        loc_arg: The name of the stage locations in its constructor, files and attribute
            ('prune_loc'); ``stage_loc`` reads them under any name.
        loc_lowest: The first block a stage may be at (1 where a stage needs an earlier block's
            attention).
        loc_why: Why, in a message (' (the ranking needs ...)').
        stages_what: What its stages are, in messages ('pruning blocks (drop_loc)').
        ratio_meaning: What one keep ratio is, in messages.
    """
    loc_arg: ClassVar[str] = ''
    loc_lowest: ClassVar[int] = 0
    loc_why: ClassVar[str] = ''
    stages_what: ClassVar[str] = 'stages'
    ratio_meaning: ClassVar[str] = 'the fraction of patches a stage keeps'

    keep_ratio = setting('keep_ratio', 'Per stage, the fraction of the patches it keeps.')

    @property
    def stage_loc(self) -> Tuple[int, ...]:
        """The blocks where the stages are (``loc_arg`` in the constructor and files)."""
        return self._sparsity[self.loc_arg]

    def num_keep(self, stage: int, num_patches: int) -> int:
        """Patches kept in ``stage`` of ``num_patches``: ``int(N * keep_ratio[stage])``, at least 1."""
        return max(1, int(num_patches * self.keep_ratio[stage]))

    def stage_of_block(self, block: int) -> Optional[int]:
        """The stage block ``block`` starts (or holds), or None."""
        return self._stage_of_block.get(block)

    def _stage_ratios(self, value: Union[float, Sequence[float]], num_stages: int) -> Tuple[float, ...]:
        """The per-stage keep ratios of a ``keep_ratio`` given (a float: the same at every stage)."""
        return per_stage_ratio(value, num_stages, self.stages_what, self.ratio_meaning)

    def _checked_sparsity(self, current: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        """New stage locations keep a single keep ratio for all of their stages; per-stage ratios
        must then be given with them."""
        loc = current.get(self.loc_arg)
        if self.loc_arg in given:
            loc = block_indices(given[self.loc_arg], self.loc_arg, self.loc_lowest, len(self.blocks), self.loc_why)
        old = current.get('keep_ratio', ())
        if 'keep_ratio' in given:
            ratios = self._stage_ratios(given['keep_ratio'], len(loc))
        elif len(old) == len(loc):
            ratios = old
        elif len(set(old)) == 1:
            ratios = self._stage_ratios(old[0], len(loc))
        else:
            raise ValueError(f'the model has per-stage keep ratios {list(old)}; give keep_ratio with the new '
                             f'{self.loc_arg} {list(loc)}')
        return self._checked_family_settings({**current, self.loc_arg: loc, 'keep_ratio': ratios}, given)

    def _checked_family_settings(self, settings: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
        """The family's own settings checked in ``settings`` (locations and ratios already are)."""
        return settings

    def _sparsity_changed(self) -> None:
        self._stage_of_block = {b: s for s, b in enumerate(self.stage_loc)}
