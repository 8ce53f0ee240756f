"""Model compression: magnitude pruning (unstructured and structured) for the dense and the dynamic models."""
from .pruning import (
    IterativePruner,
    SparsityStats,
    apply_structure,
    attention_blocks,
    basic_blocks,
    channel_scores,
    cubic_sparsity,
    head_scores,
    load_pruned,
    magnitude_prune,
    masked_layers,
    mlp_unit_scores,
    prunable_layers,
    prune_attention_heads,
    prune_block_channels,
    prune_mlp_units,
    pruned_structure,
    remove_masks,
    save_pruned,
    shrink_attention,
    shrink_basic_block,
    shrink_mlp,
    sparsity,
)

__all__ = [
    'IterativePruner', 'SparsityStats', 'apply_structure', 'attention_blocks', 'basic_blocks', 'channel_scores',
    'cubic_sparsity', 'head_scores', 'load_pruned', 'magnitude_prune', 'masked_layers', 'mlp_unit_scores',
    'prunable_layers', 'prune_attention_heads', 'prune_block_channels', 'prune_mlp_units', 'pruned_structure',
    'remove_masks', 'save_pruned', 'shrink_attention', 'shrink_basic_block', 'shrink_mlp', 'sparsity',
]
