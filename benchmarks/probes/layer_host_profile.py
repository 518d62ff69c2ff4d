"""Where the eager PSA layer's host time goes at the video-ViT shape (cProfile, GPU machine).

python3 benchmarks/probes/layer_host_profile.py: the layer's forward (no grad) 200 times after a
warm-up, GPU time per call by CUDA events, then the cProfile functions by their own time and by
cumulative time.
"""

import cProfile
import pstats
import time

import torch

from psa_train.attention import PSAAttention, PSAConfig

q, k, v = (torch.randn(8, 12, 1568, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
grid = (8, 14, 14)
layer = PSAAttention(PSAConfig.default_quota())
with torch.no_grad():
    for _ in range(20):
        layer(q, k, v, grid=grid)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(200):
        layer(q, k, v, grid=grid)
    host = (time.perf_counter() - start) / 200
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / 200
    print(f"host time per forward {host * 1e3:.3f} ms, wall {wall * 1e3:.3f} ms")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        layer(q, k, v, grid=grid)
    profile.disable()
    torch.cuda.synchronize()
stats = pstats.Stats(profile)
stats.sort_stats("tottime").print_stats(25)
stats.sort_stats("cumulative").print_stats(40)
