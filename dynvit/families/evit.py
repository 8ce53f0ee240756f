"""EViT (Liang et al., ICLR 2022, arXiv:2202.07800): keep the attentive tokens, fuse the rest into one."""
from . import FamilySpec

_MODEL = 'dynvit.models.evit'

SPEC = FamilySpec(
    name='EViT',
    models=(_MODEL,),
    layers=('dynvit.layers.token_fusion',),
    exports={name: _MODEL for name in ('EViT', 'EViTAux', 'evit_from_vit')},
    arch_prefixes=('evit_',),
    knob='keep_ratio',
    flag='--keep-ratio',
    flag_type='fraction',
    knob_noun='keep ratio',
    meaning='rho: every pruning block keeps ceil(rho * n) of its n non-class tokens (an earlier fused token counts) '
            'and fuses the rest into one (0.7, 196 patches: 138, 98, 70 kept + 1 fused)',
    order=30,
    kept_unit='patches',
    stage_label='patches kept as tokens / stage',
    per_block_label='tokens per block',
    total_label='patches',
    picture='stages',
    example='evit_pico_patch4_28.fmnist_kr07',
    example_value='0.5',
)
