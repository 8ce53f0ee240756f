from .attention import PolicyAttention, attention_with_class_row, class_attention_row, policy_attention, policy_bias
from .channel_gate import (
    ChannelGate,
    channel_union,
    folded_conv_bn,
    masked_saliency,
    num_kept,
    select_channels,
    shared_conv,
    sliced_conv,
    sliced_weight,
)
from .conv_stem import ConvPatchEmbed
from .evo_update import block_forward_with_cls_attention, merge_slow_fast, representative_token, split_slow_fast
from .keep_predictor import KeepPredictor
from .token_fusion import block_forward_keep_attentive, keep_attentive
from .token_merging import (
    TokenMatch,
    bipartite_soft_matching,
    max_merge,
    merge_positions,
    merge_tokens,
    merging_block_forward,
    size_bias,
)
from .token_sampling import packed_padding, sample_points, sample_tokens, sampling_block_forward
from .token_ops import (
    attention_residual,
    gather_tokens,
    is_packable,
    is_timm_attention,
    mlp_residual,
    packed_attention,
    packed_block_forward,
    packed_drop_path,
    residual_block_forward,
    unpack_tokens,
)
from .weight_reads import cache_name, drop_weight_caches, reads_layer_weights
