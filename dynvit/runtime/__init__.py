"""Per-input MAC accounting and sparsity reports."""
from .macs import attention_macs, block_macs, conv2d_macs, conv_macs, count_flops, dense_vit_macs, linear_macs, vit_macs
from .report import ImageReport, SparsityReport, profile
from .timing import median_latencies, smooth_images
