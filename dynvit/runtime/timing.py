"""Latency measurement shared by the benchmarks and the CLI: its inputs and its medians."""
import statistics
import time
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def smooth_images(batch: int, size: Tuple[int, int, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[batch, C, H, W]`` low-frequency noise (normal values on a grid 8 times coarser, bilinearly
    upsampled) for timing: the token and channel choices vary per image as on photos, where white
    noise would make every image look alike to the selection."""
    c, h, w = size
    coarse = torch.randn(batch, c, max(2, h // 8), max(2, w // 8), generator=generator)
    return F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)


def median_latencies(models: Dict[str, nn.Module], x: torch.Tensor, rounds: int, per_round: int) -> Dict[str, float]:
    """Median seconds per forward of each model on ``x``.

    Models take turns round by round so they share the machine's noise; within a round a
    model runs one untimed warm-up and then ``per_round`` timed forwards back to back, as a
    model serving requests does (its weights stay warm in cache, not evicted by the others). On
    a CUDA device each timed forward ends with a synchronisation (the time is the device's).
    """
    times = {k: [] for k in models}
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.device.type == 'cuda' else (lambda: None)
    with torch.inference_mode():
        for _ in range(rounds):
            for k, m in models.items():
                m(x)
                sync()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    m(x)
                    sync()
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
