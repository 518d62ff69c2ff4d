"""Setup the probes share: the Wan shape and its random inputs on the GPU (kernel_bench.inputs).

Probes run from the repository root (python3 benchmarks/probes/NAME.py); this puts benchmarks/ on
the path for kernel_bench.
"""
import sys

import torch

sys.path.insert(0, "benchmarks")
from kernel_bench import inputs  # noqa: E402

B, H, L, D = 1, 12, 32760, 128
SCALE = D ** -0.5


def wan_inputs(seed=0, device="cuda"):
    """(generator, q, k, v, do) with the generator's state after drawing them (probes draw level maps next)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, do = (t.detach() for t in inputs((B, H, L, D), device, gen))
    return gen, q, k, v, do
