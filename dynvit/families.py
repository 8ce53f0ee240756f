"""What each family's sparsity knob means, in words, without importing torch.

The model classes take their ``sparsity_meaning`` from here and the command line's help texts
list it, so ``dynvit predict --help`` can say what a value means for each family while staying
fast. A new family adds its line.
"""
from typing import Dict, Tuple

__all__ = ['KNOBS', 'knob_help']

# family -> (set_sparsity keyword of the knob, what one value of it means)
KNOBS: Dict[str, Tuple[str, str]] = {
    'DynamicViT': ('keep_ratio', 'rho: stage s keeps rho^s of the original patches, decisions cumulative '
                                 '(0.5 -> 0.5 / 0.25 / 0.125 over three stages)'),
    'Evo-ViT': ('keep_ratio', 'rho: every stage gives the full update to rho of the patches, re-ranked each '
                              'stage (0.5 -> 0.5 / 0.5)'),
    'EViT': ('keep_ratio', 'rho: every pruning block keeps ceil(rho * n) of its n non-class tokens (an earlier '
                           'fused token counts) and fuses the rest into one (0.7, 196 patches: 138, 98, 70 kept + 1 '
                           'fused)'),
    'ToMe': ('r', 'r: every block merges r of its tokens into their most similar ones (at most half), so the '
                  'next computes r fewer (8 on DeiT: 197, 189, ..., 109 tokens into the 12 blocks); a list gives one '
                  'per block'),
    'FBS': ('density', 'd: every gated convolution computes the top ceil(d * C) of its C output channels'),
}


def knob_help(knob: str) -> str:
    """``'DynamicViT: ...; Evo-ViT: ...'`` for the families whose knob is ``knob``."""
    return '; '.join(f'{family}: {meaning}' for family, (k, meaning) in KNOBS.items() if k == knob)
