"""DynamicViT (Rao et al., NeurIPS 2021, arXiv:2106.02034): learned keep predictors drop patch tokens."""
from . import FamilySpec

_MODEL = 'dynvit.models.dynamic_vit'

SPEC = FamilySpec(
    name='DynamicViT',
    models=(_MODEL,),
    layers=('dynvit.layers.keep_predictor', 'dynvit.layers.attention'),
    exports={name: _MODEL for name in ('DynamicVisionTransformer', 'DynamicViTAux', 'DynamicViTLoss', 'ratio_loss',
                                       'token_distillation_loss')},
    arch_prefixes=('dynamicvit_',),
    knob='keep_ratio',
    flag='--keep-ratio',
    flag_type='fraction',
    knob_noun='keep ratio',
    meaning='rho: stage s keeps rho^s of the original patches, decisions cumulative (0.5 -> 0.5 / 0.25 / 0.125 '
            'over three stages)',
    order=10,
    kept_unit='patches',
    stage_label='kept patch tokens per stage',
    per_block_label='tokens per block',
    total_label='patches',
    sparse_label='keep predictors',
    own_parts={'score_predictor.': 'DynamicViT keep predictors'},
    picture='stages',
    example='dynamicvit_pico_patch4_28.fmnist_kr05',
    example_value='0.4',
)
