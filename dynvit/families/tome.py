"""ToMe, Token Merging (Bolya et al., ICLR 2023, arXiv:2210.09461): merge similar tokens in every block."""
from . import FamilySpec

_MODEL = 'dynvit.models.tome'

SPEC = FamilySpec(
    name='ToMe',
    models=(_MODEL,),
    layers=('dynvit.layers.token_merging',),
    exports={name: _MODEL for name in ('ToMeVisionTransformer', 'ToMeAux', 'apply_tome', 'parse_r')},
    arch_prefixes=('tome_',),
    knob='r',
    flag='--merge-r',
    flag_type='counts',
    knob_noun='tokens merged per block: R, R1,R2,... (per block) or R:INFLECT (the released schedule, 16:-1 '
              'decreasing)',
    meaning='r: every block merges r of its tokens into their most similar ones (at most half), so the next '
            'computes r fewer (8 on DeiT: 197, 189, ..., 109 tokens into the 12 blocks); a list gives one per block',
    order=40,
    kept_unit='patches',
    stage_label='patch tokens after each merging block',
    per_block_label='tokens per block',
    total_label='patches',
    picture='groups',
    example='tome_pico_patch4_28.fmnist_r8',
    example_value='6',
)
