"""FBS, Feature Boosting and Suppression (Gao et al., ICLR 2019, arXiv:1810.05331): channel gates skip
convolution channels per image."""
from . import FamilySpec

_BASE, _RESNET, _EFFNET = 'dynvit.models._fbs', 'dynvit.models.fbs_resnet', 'dynvit.models.fbs_efficientnet'

SPEC = FamilySpec(
    name='FBS',
    models=(_BASE, _RESNET, _EFFNET),
    layers=('dynvit.layers.channel_gate',),
    exports={'FBSAux': _BASE, 'FBSModel': _BASE, 'FBSLoss': _BASE, 'saliency_l1': _BASE, 'FBSResNet': _RESNET,
             'FBSBasicBlock': _RESNET, 'FBSEfficientNet': _EFFNET, 'FBSInvertedResidual': _EFFNET,
             'lite0_package_weights': _EFFNET},
    arch_prefixes=('fbs_',),
    knob='density',
    flag='--density',
    flag_type='fraction',
    knob_noun='density',
    meaning='d: every gated convolution computes the top ceil(d * C) of its C output channels',
    order=50,
    kept_unit='channels',
    stage_label='kept channels per gated layer',
    per_block_label='of channels',
    total_label='gated channels',
    kept_style='runs',
    sparse_label='channel gates',
    picture='channels',
    onnx_batch_fixed='the kept channels of each image run as one grouped convolution whose group count is the batch '
                     'size, a constant of an ONNX Conv',
    example='fbs_resnet18_half.fmnist_d50',
    example_value='0.3',
)
