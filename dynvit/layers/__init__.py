from .attention import PolicyAttention, policy_attention, policy_bias
from .keep_predictor import KeepPredictor
from .token_ops import gather_tokens, is_packable, packed_attention, packed_block_forward, unpack_tokens
