"""Forward kernel variants: paired pooled tiles, the bias-free step on gathered tiles, pooled
tile widths, on density-0.15 maps and on level-2-only / level-8-only maps (Wan shape).
Run from the repository root: python3 benchmarks/probes/pooled_tile_variants.py"""
import time, triton
from wan_setup import B, H, L, D, SCALE, wan_inputs
from kernel_bench import make_levels, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward

dev, scale = "cuda", SCALE
gen, q, k, v, do = wan_inputs()
pyr = build_pyramid(k, v)
VARIANTS = {
    64: [("base (gathered L8 clean)", {}), ("old: L8 masked", dict(fwd_clean_levels=(1, 2, 4))),
         ("pair 2", dict(fwd_pair_levels=(2,))), ("pair 8", dict(fwd_pair_levels=(8,))),
         ("pair 2,4,8", dict(fwd_pair_levels=(2, 4, 8))), ("pair 1,2,4,8", dict(fwd_pair_levels=(1, 2, 4, 8))),
         ("L8 tile 64 2st", dict(fwd_tiles=(64, 32, 32, 64))),
         ("L8 tile 64 2st pair 2", dict(fwd_tiles=(64, 32, 32, 64), fwd_pair_levels=(2,))),
         ("pair 2,4,8 3st", dict(fwd_pair_levels=(2, 4, 8), fwd_stages=3))],
    32: [("base", {}), ("pair 1,2,4,8", dict(fwd_pair_levels=(1, 2, 4, 8))),
         ("pair 2,4,8", dict(fwd_pair_levels=(2, 4, 8))), ("pair 1", dict(fwd_pair_levels=(1,))),
         ("pair 1,2,4,8 4w 2st", dict(fwd_pair_levels=(1, 2, 4, 8), fwd_warps=4, fwd_stages=2)),
         ("pair 1,2,4,8 4w 3st", dict(fwd_pair_levels=(1, 2, 4, 8), fwd_warps=4, fwd_stages=3))],
}
for bn, variants in VARIANTS.items():
    n_qb, n_kb = triton.cdiv(L, 128), triton.cdiv(L, bn)
    maps = {name: make_levels(B, H, n_qb, n_kb, mix, dev, gen) for name, mix in
            [("mix0.15", MIXES[0.15]), ("L2 5%", (0.0, 0.05, 0, 0)), ("L8 20%", (0.0, 0, 0, 0.20))]}
    plans = {name: build_plan(lv, bn, True, transposed=False) for name, lv in maps.items()}
    base_cfg = tuning.get_config(D, 128, bn, q.dtype)
    ref = None
    for vname, change in variants:
        cfg = tuning.replace(base_cfg, **change)
        t0 = time.time()
        try:
            out, lse = pyramid_forward(q, k, v, pyr, plans["mix0.15"], 128, bn, scale, cfg)
        except Exception as e:
            print(f"bn{bn} {vname}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        if ref is None:
            ref = (out.float(), lse)
        err = (out.float() - ref[0]).abs().max().item()
        lerr = (lse - ref[1]).abs().max().item()
        times = {name: bench(lambda: pyramid_forward(q, k, v, pyr, plan, 128, bn, scale, cfg)) for name, plan in plans.items()}
        print(f"bn{bn} {vname:28s} " + " ".join(f"{n} {t:.3f}" for n, t in times.items())
              + f"  max|dout| {err:.2e} max|dlse| {lerr:.2e}  ({time.time() - t0:.0f}s)", flush=True)
for chunk, w in ((64, 8), (32, 8), (64, 4)):
    print("pyramid", chunk, w, round(bench(lambda: build_pyramid(k, v, chunk, w)), 4))
