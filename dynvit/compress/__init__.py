"""Model compression for the dense and the dynamic models alike.

* ``magnitude``: unstructured magnitude pruning (Han et al. 2015, arXiv:1506.02626), masks kept
  through fine-tuning; ``schedule``: the cubic sparsity ramp and iterative pruning.
* ``structured``: attention heads, MLP units and basic-block channels cut out of the tensors;
  ``saving``: their shapes, read and re-applied (``dynvit.save_pruned`` stores them in the file).
* ``quantize``: INT8 post-training quantization of the linear layers (fp16 / bf16 storage is
  ``dynvit.save_model(..., dtype=...)``).
* ``autoprune``: AutoPrune (Xiao et al., NeurIPS 2019), pruning learnt through trained scores.
"""
from .autoprune import apply_autoprune, autoprune_layers, autoprune_penalty, finalize_autoprune, step_ste
from .quantize import int8_layers, is_quantized, quantize_int8
from ._masks import detach_masked_weights
from ._select import GROUPS, masked_layers, prunable_layers
from .magnitude import SparsityStats, magnitude_prune, remove_masks, sparsity
from .saving import apply_structure, pruned_structure
from .schedule import IterativePruner, cubic_sparsity
from .structured import (
    attention_blocks,
    basic_blocks,
    channel_scores,
    head_scores,
    mlp_unit_scores,
    prune_attention_heads,
    prune_block_channels,
    prune_mlp_units,
    shrink_attention,
    shrink_basic_block,
    shrink_mlp,
)

__all__ = [
    'apply_autoprune', 'autoprune_layers', 'autoprune_penalty', 'finalize_autoprune', 'step_ste',
    'int8_layers', 'is_quantized', 'quantize_int8',
    'GROUPS', 'IterativePruner', 'detach_masked_weights', 'SparsityStats', 'apply_structure', 'attention_blocks', 'basic_blocks', 'channel_scores',
    'cubic_sparsity', 'head_scores', 'magnitude_prune', 'masked_layers', 'mlp_unit_scores',
    'prunable_layers', 'prune_attention_heads', 'prune_block_channels', 'prune_mlp_units', 'pruned_structure',
    'remove_masks', 'shrink_attention', 'shrink_basic_block', 'shrink_mlp', 'sparsity',
]
