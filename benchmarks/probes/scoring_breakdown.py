"""Block scoring + assignment at the Wan shape (block_n 64), a quarter and an eighth sampled: the
whole call eagerly (`do_bench`, host launch costs included) against CUDA-graph replay (GPU time
alone), then its stages alone, the pooling launch at other sizes, and the level assignment's
launch shapes. Run from the repository root."""
import functools

import torch

from wan_setup import L, SCALE, wan_inputs  # first: puts benchmarks/ on the path
from kernel_bench import bench, graph_time

from psa_train.attention import PSAConfig, assign_levels, block_scores
from psa_train.attention.scoring import _sample_tables
from psa_train.kernels.gluon_block_scores import block_sums_gluon
from psa_train.attention.levels import BOUNDARY_ONE, quota_counts
from psa_train.kernels.triton_assign import assign_levels_triton
from psa_train.kernels.triton_block_scores import (
    CUDA_DEFAULTS,
    DEFAULTS,
    LOG2_E,
    SCRATCH_DTYPES,
    _rows_in_place,
    pool_scores,
)



def graph(fn):
    """graph_time, or why the call could not be captured."""
    try:
        return f"{graph_time(fn):.3f}"
    except Exception as exc:  # noqa: BLE001
        return f"n/a ({type(exc).__name__}: {str(exc)[:80]})"


_, q, k, _, _ = wan_inputs()
for fraction in (0.25, 0.125):
    cfg = PSAConfig(sample_fraction=fraction)
    scoring = functools.partial(block_scores, q, k, cfg.block_m, cfg.block_n, fraction, cfg.score_reduction)
    scores = scoring()
    assign = functools.partial(assign_levels, scores, cfg)
    both = lambda: assign_levels(scoring(), cfg)  # noqa: E731
    print(f"fraction {fraction}: block_scores eager {bench(scoring):.3f} / graph {graph(scoring)} ms; "
          f"assign_levels eager {bench(assign):.3f} / graph {graph(assign)} ms; "
          f"both eager {bench(both):.3f} / graph {graph(both)} ms", flush=True)

    qt, kt = _sample_tables(L, cfg.block_m, fraction, "cuda"), _sample_tables(L, cfg.block_n, fraction, "cuda")
    qs, ks = _rows_in_place(q, qt.stride), _rows_in_place(k, kt.stride)
    slots = kt.rows.shape[1]
    pass1 = functools.partial(block_sums_gluon, qs, ks, kt.valid.view(torch.int8),
                              slots, SCALE * LOG2_E, kt.full_blocks, SCRATCH_DTYPES[CUDA_DEFAULTS["scratch"]],
                              DEFAULTS["gluon_consumers"], DEFAULTS["gluon_tile"] or None,
                              num_q_rows=qt.rows.numel(), num_k_rows=kt.rows.numel())
    sums, maxes, lse, per_tile = pass1()
    print(f"  pass 1 (rows in place) {bench(pass1):.3f} ms, graph {graph(pass1)} ms; "
          f"scratch {sums.numel() * sums.element_size() / 2**20:.0f} MiB", flush=True)
    reference = None
    for block_q, chunk, normalize in ((128, 64, True), (64, 64, True), (128, 128, True), (128, 64, False)):
        pool = functools.partial(pool_scores, sums, maxes, lse, qt.valid, qt.rows.shape[1], per_tile,
                                 cfg.score_reduction, normalize, block_q, chunk)
        out = pool()
        reference = out if reference is None else reference
        diff = (out - reference).abs().max().item() if normalize else float("nan")
        print(f"  pool rows {block_q}, key blocks {chunk}, normalize={normalize}: {bench(pool):.4f} ms "
              f"(max diff to the first {diff:.1e})", flush=True)

# The level assignment's launch shape: rows per program and warps (default: 1024 lanes, rows*nK/256 warps).
for cfg in (PSAConfig(), PSAConfig.wan21_1_3b()):
    scores = block_scores(q, k, cfg.block_m, cfg.block_n, cfg.sample_fraction, cfg.score_reduction)
    if cfg.band_mode == "quota":
        bands = {"counts": quota_counts(scores.shape[-1], cfg, None)}
    else:
        bands = {"bounds": [float("inf") if b >= BOUNDARY_ONE else b for b in cfg.boundaries(None).values()]}
    default = assign_levels_triton(scores, **bands)
    for rows, warps in ((None, None), (1, 2), (1, 4), (1, 8), (2, 2), (2, 8), (4, 4), (4, 8), (4, 16), (8, 16)):
        try:
            run = functools.partial(assign_levels_triton, scores, rows=rows, num_warps=warps, **bands)
            same = bool((run() == default).all())
            print(f"assign {cfg.band_mode} nK={scores.shape[-1]} rows {rows} warps {warps}: {bench(run):.4f} ms "
                  f"(levels equal to the default launch: {same})", flush=True)
        except Exception as exc:  # noqa: BLE001  (a launch shape that does not compile)
            print(f"assign {cfg.band_mode} rows {rows} warps {warps}: FAILED {type(exc).__name__}", flush=True)
