"""The pooling pass of block scoring at the Wan shape (quarter sampled, block_n 64 and 32): the
Triton kernel against the Gluon one (`pool_scores_gluon`) at several layouts, on one pass 1's
outputs, then the whole scoring call with each pooling, in one process (first and last rows repeat
the Triton pooling to show the drift). Run from the repository root on a Hopper GPU."""
import functools

import torch

from wan_setup import L, SCALE, wan_inputs  # first: puts benchmarks/ on the path
from kernel_bench import bench

from psa_train.attention.scoring import _sample_tables
from psa_train.kernels import gluon_block_scores as gbs
from psa_train.kernels.triton_block_scores import LOG2_E, _rows_in_place, block_scores_triton, pool_scores

SHAPES = ((8, 32), (8, 64), (4, 32), (8, 16))  # (rows, rows x blocks) per thread at most
_, q, k, _, _ = wan_inputs()
for block_n in (64, 32):
    qt, kt = _sample_tables(L, 128, 0.25, "cuda"), _sample_tables(L, block_n, 0.25, "cuda")
    q_slots, k_slots = qt.rows.shape[1], kt.rows.shape[1]
    sums, maxes, lse, per_tile = gbs.block_sums_gluon(
        _rows_in_place(q, qt.stride), _rows_in_place(k, kt.stride), kt.valid.view(torch.int8), k_slots,
        SCALE * LOG2_E, kt.full_blocks, torch.float16, 4, 128, num_q_rows=qt.rows.numel(),
        num_k_rows=kt.rows.numel())
    q_valid = qt.valid.view(torch.int8)
    by_triton = functools.partial(pool_scores, sums, maxes, lse, q_valid, q_slots, per_tile)
    reference = by_triton()
    print(f"block_n {block_n}: pooling alone, triton {bench(by_triton, rep=200):.3f} ms", flush=True)
    for shape in SHAPES:
        gbs.POOL_SHAPE = shape
        by_gluon = functools.partial(gbs.pool_scores_gluon, sums, maxes, lse, q_valid, q_slots, per_tile)
        diff = ((by_gluon() - reference).norm() / reference.norm()).item()
        print(f"block_n {block_n}: pooling alone, gluon {shape} (vec, group warps, slot lanes "
              f"{gbs._pool_shape(q_slots, per_tile)}): {bench(by_gluon, rep=200):.3f} ms (rel. diff {diff:.1e})",
              flush=True)
    print(f"block_n {block_n}: pooling alone, triton {bench(by_triton, rep=200):.3f} ms", flush=True)

    whole = functools.partial(block_scores_triton, q, k, qt.rows, qt.valid, kt.rows, kt.valid, q.shape[-1] ** -0.5,
                              "max", True, kt.full_blocks, (qt.stride, kt.stride), pass1="gluon")
    for pool in ("triton", "gluon", "triton", "gluon"):
        gbs.POOL_SHAPE = SHAPES[0]
        run = functools.partial(whole, gluon_pool=pool)
        print(f"block_n {block_n}: scoring, {pool} pooling: {bench(run, rep=100):.3f} ms", flush=True)
