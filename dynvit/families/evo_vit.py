"""Evo-ViT (Xu et al., AAAI 2022, arXiv:2108.01390): slow-fast token evolution by class attention."""
from . import FamilySpec

_MODEL = 'dynvit.models.evo_vit'

SPEC = FamilySpec(
    name='Evo-ViT',
    models=(_MODEL,),
    layers=('dynvit.layers.evo_update',),
    exports={name: _MODEL for name in ('EvoVisionTransformer', 'EvoViTAux', 'EvoViTLoss')},
    arch_prefixes=('evovit_',),
    knob='keep_ratio',
    flag='--keep-ratio',
    flag_type='fraction',
    knob_noun='keep ratio',
    meaning='rho: every stage gives the full update to rho of the patches, re-ranked each stage (0.5 -> 0.5 / 0.5)',
    order=20,
    kept_unit='patches',
    stage_label='fully updated patches / stage',
    per_block_label='tokens per block',
    total_label='patches',
    own_parts={'head_cls.': "Evo-ViT's class-token head", 'norm_cls.': "Evo-ViT's class-token norm"},
    picture='stages',
    example='evovit_pico_patch4_28.fmnist_kr05',
    example_value='0.4',
)
