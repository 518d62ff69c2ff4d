"""A/B of the 128x128x64 forward entry (gathered pooled tiles) against the one before (TMA
pooled tiles), twice. Run from the repository root."""
import sys, torch
sys.path.insert(0, "benchmarks")
from kernel_bench import make_levels, inputs, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward

gen = torch.Generator(device="cuda").manual_seed(1)
B, H, L, D = 1, 12, 32760, 128
q, k, v, do = (t.detach() for t in inputs((B, H, L, D), "cuda", gen))
pyr = build_pyramid(k, v)
plans = {dd: build_plan(make_levels(B, H, 256, 512, MIXES[dd], "cuda", gen), 64, True, transposed=False) for dd in (0.15, 1.0)}
new = tuning.get_config(D, 128, 64, q.dtype)
old = tuning.replace(new, fwd_pooled_tma=True, fwd_tiles=(64, 32, 32, 32))
for rep in range(2):
    for name, cfg in (("previous entry", old), ("new entry", new)):
        ts = {dd: bench(lambda: pyramid_forward(q, k, v, pyr, p, 128, 64, D ** -0.5, cfg)) for dd, p in plans.items()}
        print(f"fwd kernel {name:15s} d0.15 {ts[0.15]:.3f} ms, d1.0 {ts[1.0]:.3f} ms", flush=True)
