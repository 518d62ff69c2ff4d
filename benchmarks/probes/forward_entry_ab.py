"""A/B of the 128x128x64 forward entry (gathered pooled tiles) against the one before (TMA
pooled tiles), twice. Run from the repository root."""
from wan_setup import B, H, D, SCALE, wan_inputs
from kernel_bench import make_levels, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward

gen, q, k, v, do = wan_inputs(seed=1)
pyr = build_pyramid(k, v)
plans = {dd: build_plan(make_levels(B, H, 256, 512, MIXES[dd], "cuda", gen), 64, True, transposed=False) for dd in (0.15, 1.0)}
new = tuning.get_config(D, 128, 64, q.dtype)
old = tuning.replace(new, fwd_pooled_tma=True, fwd_tiles=(64, 32, 32, 32))
for rep in range(2):
    for name, cfg in (("previous entry", old), ("new entry", new)):
        ts = {dd: bench(lambda: pyramid_forward(q, k, v, pyr, p, 128, 64, SCALE, cfg)) for dd, p in plans.items()}
        print(f"fwd kernel {name:15s} d0.15 {ts[0.15]:.3f} ms, d1.0 {ts[1.0]:.3f} ms", flush=True)
