"""The backward with stored level-1 dS (KernelConfig.dq_stored_ds) against the default order at
the Wan shape (block_n 64): gradient agreement, whole-backward time and stage times, densities
0.15 / 0.25 / 0.5 (the buffer cap raised so every density takes the stored path).
Run from the repository root: python3 benchmarks/probes/stored_ds_backward.py"""
import sys
import torch
sys.path.insert(0, "benchmarks")
from kernel_bench import make_levels, inputs, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan, with_transposed, level1_slots
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward
from psa_train.kernels.triton_backward import (launch_delta, launch_dkdv, launch_dq, launch_dq_stored,
                                               pooled_grad_buffers, pyramid_backward)

gen = torch.Generator(device="cuda").manual_seed(0)
B, H, L, D = 1, 12, 32760, 128
q, k, v, do = (t.detach() for t in inputs((B, H, L, D), "cuda", gen))
scale = D ** -0.5
pyr = build_pyramid(k, v)
base = tuning.get_config(D, 128, 64, q.dtype)
stored = tuning.replace(base, dq_stored_ds=True, stored_ds_max_bytes=1 << 40)
for dens in (0.15, 0.25, 0.5):
    levels = make_levels(B, H, 256, 512, MIXES[dens], "cuda", gen)
    plan = with_transposed(build_plan(levels, 64, True, transposed=False), levels)
    out, lse = pyramid_forward(q, k, v, pyr, plan, 128, 64, scale, base)
    g0 = pyramid_backward(q, k, v, out, lse, do, pyr, plan, 128, 64, scale, base)
    g1 = pyramid_backward(q, k, v, out, lse, do, pyr, plan, 128, 64, scale, stored)
    diffs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(g1, g0)]
    del g0, g1
    t0 = bench(lambda: pyramid_backward(q, k, v, out, lse, do, pyr, plan, 128, 64, scale, base), 100)
    t1 = bench(lambda: pyramid_backward(q, k, v, out, lse, do, pyr, plan, 128, 64, scale, stored), 100)
    delta = launch_delta(out, do)
    pooled = pooled_grad_buffers(k)
    slots = level1_slots(plan)
    ds = torch.empty((slots.count * 64, 128), dtype=q.dtype, device="cuda")
    dqp = launch_dq(q, k, v, do, lse, delta, pyr, pooled, plan, 128, 64, scale, stored, level1=False)
    st = {
        "slots": bench(lambda: level1_slots(plan), 50),
        "dq_pooled": bench(lambda: launch_dq(q, k, v, do, lse, delta, pyr, pooled, plan, 128, 64, scale, stored,
                                             level1=False), 50),
        "dkdv_store": bench(lambda: launch_dkdv(q, k, v, do, lse, delta, pooled, plan, 128, 64, scale, stored, ds,
                                                slots), 50),
        "dq_stored": bench(lambda: launch_dq_stored(dqp, ds, slots, k, plan, 128, 64, scale, stored), 50),
    }
    print(f"d{dens}: backward default {t0:.3f} ms, stored dS {t1:.3f} ms (buffer {ds.numel() * 2 / 2**30:.2f} GiB); "
          f"rel diff dq/dk/dv {diffs[0]:.1e}/{diffs[1]:.1e}/{diffs[2]:.1e}; stages "
          + ", ".join(f"{n} {t:.3f}" for n, t in st.items()), flush=True)
    ds = dqp = pooled = None  # free the buffers before the next density
    torch.cuda.empty_cache()
