from .keep_predictor import KeepPredictor
from .token_ops import (
    gather_tokens,
    is_packable,
    keep_attention_bias,
    packed_attention,
    packed_block_forward,
    unpack_tokens,
)
