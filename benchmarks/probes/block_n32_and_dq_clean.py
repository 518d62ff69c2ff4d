"""block_n 32 forward variants after the bias-free step on gathered tiles; the dQ pass with and
without it (Wan shape). Run from the repository root."""
import torch, triton
from wan_setup import B, H, L, D, SCALE, wan_inputs
from kernel_bench import make_levels, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward
from psa_train.kernels.triton_backward import launch_delta, launch_dq, pooled_grad_buffers

dev, scale = "cuda", SCALE
gen, q, k, v, do = wan_inputs()
pyr = build_pyramid(k, v)
FWD = {
    32: [("old: 8w 3st, gathered masked", dict(fwd_clean_levels=(1, 2))), ("8w 3st clean", {}),
         ("4w 2st clean", dict(fwd_warps=4, fwd_stages=2)),
         ("4w 2st pair 2,4,8", dict(fwd_warps=4, fwd_stages=2, fwd_pair_levels=(2, 4, 8))),
         ("4w 2st pair all", dict(fwd_warps=4, fwd_stages=2, fwd_pair_levels=(1, 2, 4, 8))),
         ("4w 2st pair all L4/L8 tile 64", dict(fwd_warps=4, fwd_stages=2, fwd_pair_levels=(1, 2, 4, 8), fwd_tiles=(64, 32, 64, 64))),
         ("4w 2st pair 1,2 L4/L8 tile 64", dict(fwd_warps=4, fwd_stages=2, fwd_pair_levels=(1, 2), fwd_tiles=(64, 32, 64, 64))),
         ("8w 2st pair all", dict(fwd_warps=8, fwd_stages=2, fwd_pair_levels=(1, 2, 4, 8)))],
    64: [("pair 2,4,8", dict(fwd_pair_levels=(2, 4, 8))),
         ("pair 2 L8 tile 64", dict(fwd_pair_levels=(2,), fwd_tiles=(64, 32, 32, 64))),
         ("pair 2,4,8 L8 tile 64", dict(fwd_pair_levels=(2, 4, 8), fwd_tiles=(64, 32, 32, 64)))],
}
DQ = [("old: gathered masked", dict(dq_clean_levels=(1, 2))), ("gathered clean", {})]
for bn in (32, 64):
    n_qb, n_kb = triton.cdiv(L, 128), triton.cdiv(L, bn)
    levels = make_levels(B, H, n_qb, n_kb, MIXES[0.15], dev, gen)
    plan = build_plan(levels, bn, True)
    base_cfg = tuning.get_config(D, 128, bn, q.dtype)
    ref = None
    for vname, change in FWD[bn]:
        cfg = tuning.replace(base_cfg, **change)
        try:
            out, lse = pyramid_forward(q, k, v, pyr, plan, 128, bn, scale, cfg)
        except Exception as e:
            print(f"bn{bn} fwd {vname}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        ref = ref if ref is not None else out.float()
        t = bench(lambda: pyramid_forward(q, k, v, pyr, plan, 128, bn, scale, cfg))
        print(f"bn{bn} fwd {vname:34s} {t:.3f} ms  max|dout| {(out.float() - ref).abs().max().item():.1e}", flush=True)
    out, lse = pyramid_forward(q, k, v, pyr, plan, 128, bn, scale, base_cfg)
    delta = launch_delta(out, do)
    ref = None
    for vname, change in DQ:
        cfg = tuning.replace(base_cfg, **change)
        pooled = pooled_grad_buffers(k)
        dq = launch_dq(q, k, v, do, lse, delta, pyr, pooled, plan, 128, bn, scale, cfg)
        got = torch.cat([dq.float().flatten()] + [p.flatten() for p in pooled])
        ref = ref if ref is not None else got
        t = bench(lambda: launch_dq(q, k, v, do, lse, delta, pyr, pooled, plan, 128, bn, scale, cfg))
        rel = ((got - ref).norm() / ref.norm()).item()
        print(f"bn{bn} dq {vname:34s} {t:.3f} ms  rel diff {rel:.1e}", flush=True)
for chunk, w in ((32, 8), (32, 16), (16, 8), (64, 8)):
    print("pyramid", chunk, w, round(bench(lambda: build_pyramid(k, v, chunk, w)), 4), flush=True)
