"""Pyramid attention kernels vs dense SDPA (cuDNN, flash) and FlexAttention block-sparse.

Run on a GPU:  python benchmarks/kernel_bench.py  [--sweep] [--shapes wan,vit] [--json out.json]
               python benchmarks/kernel_bench.py --scoring-only   (block scoring + assignment alone)
               python benchmarks/kernel_bench.py --variants       (kernel variants at density 0.15)
               python benchmarks/kernel_bench.py --sweep-only --sweep-keys 64x128x64,128x128x32

Rows: the Wan2.1-1.3B shape (B=1, H=12, L=32760, D=128) and a video-ViT shape (B=8, H=12,
L=1568, D=64), bf16, densities 1.0, 0.5, 0.25, 0.15 (10 % level 1, 5 % level 2, 20 % level 8,
rest skipped) and 0.08, block_m=128, block_n=64. Every query block row gets exactly its quota
of each level, at random key blocks. FlexAttention gets a random binary 128x128 block map of
the same density (full blocks, compiled). Timings: triton.testing.do_bench medians on random
inputs. Effective TFLOP/s = dense FLOPs x density / time (fwd 4·B·H·L²·D, fwd+bwd 3.5x that).
Ratios are ours / baseline (below 1 = faster). --sweep first times kernel configurations for each
--sweep-keys (D x block_m x block_n; D=128 at the Wan shape, D=64 at B=1, H=12, L=32760; density
0.15 and 1.0) and uses the fastest for the table (--sweep-only: prints them, no table); the
winners go into kernels/tuning.py MEASURED by hand. The table prints last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from psa_train.kernels import pyramid_attention
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan, with_transposed
from psa_train.kernels.triton_autograd import triton_pyramid_attention
from psa_train.kernels.triton_backward import launch_delta, launch_dkdv, launch_dq, pooled_grad_buffers
from psa_train.kernels.triton_forward import pyramid_forward
from psa_train.kernels.triton_pyramid import build_pyramid

SHAPES = {"wan": (1, 12, 32760, 128), "vit": (8, 12, 1568, 64)}
# density -> fractions of key blocks per row at levels 1, 2, 4, 8 (density = Σ f_s / s)
MIXES = {
    1.0: (1.0, 0.0, 0.0, 0.0),
    0.5: (0.40, 0.10, 0.10, 0.20),
    0.25: (0.18, 0.06, 0.08, 0.16),
    0.15: (0.10, 0.05, 0.0, 0.20),
    0.08: (0.05, 0.02, 0.04, 0.08),
}
BLOCK_M, BLOCK_N = 128, 64


def bench(fn, rep=300):
    return triton.testing.do_bench(fn, warmup=50, rep=rep, return_mode="median")


def make_levels(batch, heads, n_qb, n_kb, mix, device, gen):
    counts = [round(f * n_kb) for f in mix]
    counts[0] = max(1, counts[0])
    per_rank = torch.zeros(n_kb, dtype=torch.int32)
    start = 0
    for s, c in zip((1, 2, 4, 8), counts):
        per_rank[start:start + c] = s
        start += c
    ranks = torch.rand(batch, heads, n_qb, n_kb, generator=gen, device=device).argsort(-1)
    return per_rank.to(device)[ranks].contiguous()


def density(levels):
    lv = levels.float()
    return torch.where(lv > 0, 1.0 / lv.clamp_min(1), torch.zeros_like(lv)).mean().item()


def flex_block_mask(batch, heads, length, dens, device, gen):
    from torch.nn.attention.flex_attention import BlockMask

    nb = math.ceil(length / 128)
    keep = max(1, round(dens * nb))
    idx = torch.rand(batch, heads, nb, nb, generator=gen, device=device).argsort(-1).to(torch.int32)
    idx = torch.cat([idx[..., :keep].sort(-1).values, idx[..., keep:]], -1).contiguous()
    full = torch.full((batch, heads, nb), keep, dtype=torch.int32, device=device)
    zero = torch.zeros_like(full)
    mask = BlockMask.from_kv_blocks(zero, torch.zeros_like(idx), full, idx, BLOCK_SIZE=128, seq_lengths=(length, length))
    return mask, keep / nb


def fwd_bwd(fn, q, k, v, do):
    """One forward + backward. The inputs' .grad are dropped first (host only), so the backward
    writes them instead of adding into the last call's: in a model q, k, v are not leaves and
    nothing accumulates there (the add cost every method the same 0.2 ms at the Wan shape)."""
    def run():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(do)

    return run


def time_pair(fn, q, k, v, do, rep=300):
    with torch.no_grad():
        f = bench(lambda: fn(q, k, v), rep)
    fb = bench(fwd_bwd(fn, q, k, v, do), rep)
    return f, fb


def inputs(shape, device, gen):
    batch, heads, length, dim = shape
    q, k, v, do = (torch.randn(batch, heads, length, dim, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    return q, k, v, do


def stage_times(q, k, v, do, levels, cfg, scale, only=None, rep=300, block_n=BLOCK_N, block_m=BLOCK_M):
    """Each stage of our forward and backward timed alone (ms); `only` picks one stage."""
    qd, kd, vd = (t.detach() for t in (q, k, v))
    plan = build_plan(levels, block_n, cfg.heavy_first)  # the grid order the config asks for
    pyr = build_pyramid(kd, vd)
    out, lse = pyramid_forward(qd, kd, vd, pyr, plan, block_m, block_n, scale, cfg)
    delta = launch_delta(out, do)
    pooled = pooled_grad_buffers(kd)
    stages = {
        "lists": lambda: build_plan(levels, block_n, cfg.heavy_first, transposed=False),
        "transposed_lists": lambda: with_transposed(plan, levels, cfg.heavy_first),
        "pyramid": lambda: build_pyramid(kd, vd),
        "fwd_kernel": lambda: pyramid_forward(qd, kd, vd, pyr, plan, block_m, block_n, scale, cfg),
        "delta": lambda: launch_delta(out, do),
        "zero_pooled_grads": lambda: pooled_grad_buffers(kd),
        "dq_pass": lambda: launch_dq(qd, kd, vd, do, lse, delta, pyr, pooled, plan, block_m, block_n, scale, cfg),
        "dkdv_pass": lambda: launch_dkdv(qd, kd, vd, do, lse, delta, pooled, plan, block_m, block_n, scale, cfg),
    }
    return {name: bench(fn, rep) for name, fn in stages.items() if only in (None, name)}


def graph_time(fn):
    """Forward captured in a CUDA graph and replayed: the GPU time without Python launch costs."""
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    return bench(graph.replay)


# Forward candidates: the Triton kernel (every one takes the bias-free step on clean tiles; the
# fourth and fifth are the third session's winners without paired tiles), then the Gluon kernel.
# Each names fwd_gluon, since an entry's own setting would otherwise decide which kernel runs.
SWEEP_FWD = [
    dict(fwd_tiles=(64, 32, 32, 32), fwd_warps=4, fwd_stages=2, fwd_pair_levels=(), fwd_gluon=False),
    dict(fwd_tiles=(64, 32, 32, 32), fwd_warps=4, fwd_stages=2, fwd_pair_levels=(2, 4, 8), fwd_gluon=False),
    dict(fwd_tiles=(64, 32, 32, 32), fwd_warps=4, fwd_stages=2, fwd_pair_levels=(1, 2, 4, 8), fwd_gluon=False),
    dict(fwd_tiles=(64, 64, 64, 64), fwd_warps=4, fwd_stages=3, fwd_pair_levels=(), fwd_gluon=False),
    dict(fwd_tiles=(64, 32, 32, 32), fwd_warps=4, fwd_stages=3, fwd_pair_levels=(), fwd_gluon=False),
    # the Gluon forward (Hopper, block_n a multiple of 64; elsewhere the entry's Triton kernel runs)
    dict(fwd_gluon=True, fwd_gluon_stages=4, fwd_gluon_pingpong=True),
    dict(fwd_gluon=True, fwd_gluon_stages=3, fwd_gluon_pingpong=False),
]
# dQ and dK/dV: the Triton kernels' candidates, then the Gluon kernels (Hopper; elsewhere they
# fall back to the Triton kernel of the key's entry)
SWEEP_DQ = [
    dict(dq_tiles=(64, 64, 64, 64), dq_warps=8, dq_stages=3, dq_gluon=False),
    dict(dq_tiles=(64, 64, 64, 64), dq_warps=8, dq_stages=2, dq_gluon=False),
    dict(dq_tiles=(64, 64, 64, 64), dq_warps=4, dq_stages=3, dq_gluon=False),
    dict(dq_tiles=(64, 64, 64, 64), dq_warps=4, dq_stages=2, dq_gluon=False),
    dict(dq_tiles=(64, 64, 64, 64), dq_warps=8, dq_stages=3, dq_gluon=True),
]
SWEEP_DKDV = [
    dict(dkdv_ksub=64, dkdv_msub=64, dkdv_warps=4, dkdv_stages=2, dkdv_gluon=False),
    dict(dkdv_ksub=64, dkdv_msub=128, dkdv_warps=4, dkdv_stages=2, dkdv_gluon=False),
    dict(dkdv_ksub=64, dkdv_msub=128, dkdv_warps=8, dkdv_stages=2, dkdv_gluon=False),
    dict(dkdv_ksub=32, dkdv_msub=128, dkdv_warps=4, dkdv_stages=2, dkdv_gluon=False),
    dict(dkdv_gluon=True),
]


# Shapes the configuration sweep times each head dimension at (long sequences: the ViT shape is
# launch-bound and would tune for Python overhead).
SWEEP_SHAPES = {128: SHAPES["wan"], 64: (1, 12, 32760, 64)}
SWEEP_KEYS = "128x128x64,64x128x64"  # (D, block_m, block_n) of the benchmark's two shapes


def sweep(key, device, gen, log, passes=("fwd", "dq", "dkdv")):
    """Fastest config per pass for key (D, block_m, block_n), bf16, at SWEEP_SHAPES[D];
    score = time at density 0.15 + time at 1.0 / 6. Passes left out keep the key's config."""
    dim, block_m, block_n = key
    shape = SWEEP_SHAPES[dim]
    q, k, v, do = inputs(shape, device, gen)
    scale = 1 / math.sqrt(dim)
    n_qb, n_kb = math.ceil(shape[2] / block_m), math.ceil(shape[2] / block_n)
    maps = {d: make_levels(shape[0], shape[1], n_qb, n_kb, MIXES[d], device, gen) for d in (0.15, 1.0)}
    base = tuning.get_config(dim, block_m, block_n, torch.bfloat16)
    best = {}
    for name, variants, stage in (("fwd", SWEEP_FWD, "fwd_kernel"), ("dq", SWEEP_DQ, "dq_pass"),
                                  ("dkdv", SWEEP_DKDV, "dkdv_pass")):
        if name not in passes:
            continue
        scores = []
        for var in variants:
            cfg = tuning.replace(base, **var)
            try:
                ts = {d: stage_times(q, k, v, do, lv, cfg, scale, stage, 150, block_n, block_m)[stage]
                      for d, lv in maps.items()}
            except Exception as exc:  # a config that does not compile or fit: skip it
                log(f"sweep {key} {name} {var}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
                continue
            score = ts[0.15] + ts[1.0] / 6
            log(f"sweep {key} {name} {var}: d0.15 {ts[0.15]:.3f} ms, d1.0 {ts[1.0]:.3f} ms")
            scores.append((score, var))
        best.update(min(scores, key=lambda s: s[0])[1])
    del q, k, v, do
    torch.cuda.empty_cache()
    return tuning.replace(base, **best)


GLUON_POOLED = dict(dq_gluon=True, dq_pooled_gluon=True)
# Kernel variants timed against each other at density 0.15 (--variants): name -> config change.
KERNEL_VARIANTS = {
    "default": {},
    "default (repeat)": {},  # the run-to-run spread
    "plain grid order": dict(heavy_first=False),
    "fwd pooled gathers": dict(fwd_pooled_tma=False),
    "fwd Q by pointer loads": dict(fwd_q_tma=False),
    "fwd 8 warps": dict(fwd_warps=8),
    "dq per-entry TMA tiles": dict(dq_pooled_gluon=False, dq_pooled_tma=True),
    "dkdv 8 warps": dict(dkdv_warps=8),
    # the Gluon backward kernels (Hopper) against the Triton ones, whatever the entry's default
    "dkdv gluon": dict(dkdv_gluon=True),
    "dq gluon level 1": dict(dq_gluon=True),
    "dq + dkdv gluon": dict(dq_gluon=True, dkdv_gluon=True),
    "dq + dkdv triton": dict(dq_gluon=False, dkdv_gluon=False),
    "no pooled atomics (wrong grads)": dict(dq_pooled_atomics=False),
    # the dQ pass's pooled levels by the Gluon kernel (its own warpgroup for dK̄/dV̄ and atomics);
    # unnamed options as KernelConfig's defaults (registers 184/120, products one after the other)
    "dq pooled gluon": GLUON_POOLED,
    "dq pooled gluon 3 stages": GLUON_POOLED | dict(dq_pooled_gluon_stages=3),
    "dq pooled gluon regs 208/72": GLUON_POOLED | dict(dq_pooled_gluon_regs=(208, 72)),
    "dq pooled gluon regs 192/104": GLUON_POOLED | dict(dq_pooled_gluon_regs=(192, 104)),
    "dq pooled gluon regs 176/136": GLUON_POOLED | dict(dq_pooled_gluon_regs=(176, 136)),
    "dq pooled gluon regs 168/152": GLUON_POOLED | dict(dq_pooled_gluon_regs=(168, 152)),
    "dq pooled gluon pipelined, regs 192/104": GLUON_POOLED | dict(dq_pooled_gluon_pipelined=True,
                                                                   dq_pooled_gluon_regs=(192, 104)),
    "dq pooled gluon pipelined, regs 184/120": GLUON_POOLED | dict(dq_pooled_gluon_pipelined=True),
    "dq pooled gluon no atomics (wrong grads)": GLUON_POOLED | dict(dq_pooled_atomics=False),
    "dq pooled triton": dict(dq_pooled_gluon=False),
    # the Gluon forward (Hopper) against the Triton one
    "fwd gluon 64-row tiles": dict(fwd_gluon=True, fwd_gluon_tile=64, fwd_gluon_stages=3),
    "fwd gluon 64-row tiles 4 stages": dict(fwd_gluon=True, fwd_gluon_tile=64, fwd_gluon_stages=4),
    "fwd gluon 64-row tiles 5 stages": dict(fwd_gluon=True, fwd_gluon_tile=64, fwd_gluon_stages=5),
    "fwd gluon 128-row tiles": dict(fwd_gluon=True, fwd_gluon_tile=128, fwd_gluon_stages=2),
    "fwd gluon 4 stages pingpong": dict(fwd_gluon=True, fwd_gluon_tile=64, fwd_gluon_stages=4, fwd_gluon_pingpong=True),
    "fwd gluon 3 stages pingpong": dict(fwd_gluon=True, fwd_gluon_tile=64, fwd_gluon_stages=3, fwd_gluon_pingpong=True),
    "fwd triton": dict(fwd_gluon=False),
    # the Triton dQ kernel's pooled levels (level 1 in Gluon): never swept in that role
    "dq pooled triton 2 stages": dict(dq_pooled_gluon=False, dq_stages=2),
    "dq pooled triton 32-row tiles": dict(dq_pooled_gluon=False, dq_tiles=(64, 32, 32, 32)),
    "dq pooled triton TMA tiles": dict(dq_pooled_gluon=False, dq_pooled_tma=True),
    # block_n 32: level-1 entries are 32 rows; gathering two per 64-row tile instead of TMA tiles of 32
    "fwd level-1 gathers 64-row tiles": dict(fwd_tma=False, fwd_tiles=(64, 32, 32, 32)),
    "dq level-1 gathers 64-row tiles": dict(dq_tma=False),
    # the bias-free step on TMA tiles of whole key blocks (default: every level) or none
    "every tile masked": dict(fwd_clean_levels=(), dq_clean_levels=()),
    "fwd clean tiles": dict(fwd_clean_levels=(1, 2, 4, 8)),
    "fwd every tile masked": dict(fwd_clean_levels=()),
}


def kernel_variants(device, gen, log, block_ns=(64, 32), names=None):
    """Whole forward, forward+backward (public API) and each stage per KERNEL_VARIANTS entry, at
    the Wan shape and density 0.15, for each key block size (64: the benchmark's; 32: Wan preset's)."""
    shape = SHAPES["wan"]
    q, k, v, do = inputs(shape, device, gen)
    scale = 1 / math.sqrt(shape[3])
    rows = []
    for block_n in block_ns:
        levels = make_levels(shape[0], shape[1], math.ceil(shape[2] / BLOCK_M), math.ceil(shape[2] / block_n),
                             MIXES[0.15], device, gen)

        def ours(q, k, v, levels=levels, block_n=block_n):
            return pyramid_attention(q, k, v, levels, BLOCK_M, block_n, scale, backend="triton")

        base = tuning.get_config(shape[3], BLOCK_M, block_n, torch.bfloat16)
        for name, change in KERNEL_VARIANTS.items():
            if names and name not in names:
                continue
            tuning.OVERRIDE = tuning.replace(base, **change)
            try:
                f, fb = time_pair(ours, q, k, v, do)
                st = stage_times(q, k, v, do, levels, tuning.OVERRIDE, scale, block_n=block_n)
            except Exception as exc:  # a variant that does not compile or fit
                log(f"variant block_n={block_n} {name}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
                continue
            finally:
                tuning.OVERRIDE = None
            rows.append(dict(block_n=block_n, variant=name, fwd=f, fb=fb, **st))
            log(f"variant block_n={block_n} {name}: fwd {f:.3f} fwd+bwd {fb:.3f} | "
                + ", ".join(f"{a} {b:.3f}" for a, b in st.items()))
    print(f"{'bn':>3} {'variant':<28} {'fwd':>6} {'f+b':>6} | {'lists':>5} {'pyr':>5} {'fwdk':>5} {'dq':>5} {'dkdv':>5}")
    for r in rows:
        print(f"{r['block_n']:>3} {r['variant']:<28} {r['fwd']:6.3f} {r['fb']:6.3f} | {r['lists']:5.2f} "
              f"{r['pyramid']:5.2f} {r['fwd_kernel']:5.2f} {r['dq_pass']:5.2f} {r['dkdv_pass']:5.2f}")
    return rows


def scoring_time(q, k):
    """Block scoring + level assignment at the benchmark's default config, the Wan preset and the
    default with an eighth of the tokens sampled (what a smaller default share would cost:
    benchmarks/probes/sample_share_accuracy.py has its effect on the level maps).

    block_scores is the whole default path (cached sample tables, pass 1, pooling); each stage is
    timed eagerly (`do_bench`, so a fast stage may be bound by its host time), and total_graph is
    all of them in one CUDA graph.
    """
    import functools

    try:
        from psa_train.attention import (
            PSAConfig,
            assign_levels,
            block_scores,
            key_similarity,
        )
    except Exception as exc:  # noqa: BLE001  (the scoring modules are written elsewhere)
        return {"error": repr(exc)}
    qd, kd = q.detach(), k.detach()
    res = {}
    configs = (("default", PSAConfig()), ("wan21_1_3b", PSAConfig.wan21_1_3b()),
               ("default, an eighth sampled", PSAConfig(sample_fraction=0.125)))
    for name, cfg in configs:
        args = (qd, kd, cfg.block_m, cfg.block_n, cfg.sample_fraction, cfg.score_reduction)
        part = {"block_scores": bench(functools.partial(block_scores, *args))}
        scores = block_scores(*args)
        part["assign_levels"] = bench(functools.partial(assign_levels, scores, cfg))
        if any(t is not None for t in cfg.similarity_thresholds.values()):
            part["key_similarity"] = bench(functools.partial(key_similarity, kd, cfg.block_n))
        part["total"] = sum(part.values())
        similar = "key_similarity" in part

        def whole(args=args, cfg=cfg, similar=similar):
            sim = key_similarity(kd, cfg.block_n) if similar else None
            return assign_levels(block_scores(*args), cfg, key_similarity=sim)

        try:  # the stages in one CUDA graph: their GPU time, whatever the host's speed
            part["total_graph"] = graph_time(whole)
        except Exception as exc:  # noqa: BLE001  (a stage that cannot be captured must not cost the table)
            print(f"scoring {name}: no CUDA-graph time ({type(exc).__name__}: {str(exc)[:120]})")
        res[f"{name} ({cfg.band_mode}, block_n={cfg.block_n})"] = {key: round(v, 3) for key, v in part.items()}
    return res


def scoring_kernel_sweep(q, k, log, only=None):
    """Time the fused block-scoring kernel's variants at the Wan shape, block_n 64 and 32.

    One line per variant: its time and its relative difference to the default's scores (a
    broken variant shows there, a failing one prints FAILED), then pass 1 alone (block sums
    to the scratch, no pooling) as a breakdown. Options: kernels/triton_block_scores.py DEFAULTS.
    """
    import functools

    from psa_train.kernels.triton_block_scores import (
        CUDA_DEFAULTS,
        DEFAULTS,
        block_scores_triton,
        block_sums,
    )

    from psa_train.attention.scoring import _sample_tables

    variants = {
        "default": {},
        "contiguous loads": {"loads": "contiguous"},
        "fp32 scratch": {"scratch": "fp32"},
        "no register cap": {"max_registers": None},
        "block_q 64, 4 warps": {"block_q": 64, "num_warps": 4},
        "every tile masked": {"k_full_blocks": 0},
        "triton pass 1": {"pass1": "triton"},
        "gluon pass 1": {"pass1": "gluon"},
        "gluon pass 1, fp32 scratch": {"pass1": "gluon", "scratch": "fp32"},
        "gluon pass 1, 2 consumers": {"pass1": "gluon", "gluon_consumers": 2, "gluon_tile": 0},
        "gluon pass 1, 4 consumers, 64-key steps": {"pass1": "gluon", "gluon_consumers": 4, "gluon_tile": 64},
        "gluon pass 1, 4 consumers, 128-key steps": {"pass1": "gluon", "gluon_consumers": 4, "gluon_tile": 128},
        "gluon pass 1, rows read in place": {"pass1": "gluon", "row_strides": "tables"},
        "gluon pass 1, rows read in place, triton pooling": {"pass1": "gluon", "row_strides": "tables",
                                                             "gluon_pool": "triton"},
    }
    if only:
        variants = {name: opts for name, opts in variants.items() if name in only}
    log(f"scoring kernel defaults on CUDA: {DEFAULTS | CUDA_DEFAULTS}")
    qd, kd = q.detach(), k.detach()
    scale = 1.0 / math.sqrt(q.shape[-1])
    for block_n in (64, 32):
        qt = _sample_tables(q.shape[2], BLOCK_M, 0.25, str(q.device))
        kt = _sample_tables(k.shape[2], block_n, 0.25, str(k.device))
        tables = (qt.rows, qt.valid, kt.rows, kt.valid, scale, "max", True)
        full = {"k_full_blocks": kt.full_blocks}
        reference = None
        for name, options in variants.items():
            label = f"scoring kernel block_n={block_n} {name}"
            try:
                if options.get("row_strides") == "tables":  # the tables' strides (block_scores passes them)
                    options = {**options, "row_strides": (qt.stride, kt.stride)}
                run = functools.partial(block_scores_triton, qd, kd, *tables, **{**full, **options})
                got = run()
                reference = got if reference is None else reference
                diff = ((got - reference).norm() / reference.norm()).item()
                log(f"{label}: {bench(run, rep=100):.3f} ms (rel. diff to default {diff:.1e})")
            except Exception as exc:  # noqa: BLE001  (a variant that does not compile or fit)
                log(f"{label}: FAILED {exc!r:.160}")
        for pass1 in ("triton", "gluon"):
            label = f"scoring kernel block_n={block_n} pass 1 only, {pass1} (block sums to the scratch, fp32)"
            try:
                run = functools.partial(block_sums, qd, kd, qt.rows.flatten(), kt.rows.flatten(),
                                        kt.valid.flatten(), kt.rows.shape[1], scale, pass1=pass1, **full)
                log(f"{label}: {bench(run, rep=100):.3f} ms")
            except Exception as exc:  # noqa: BLE001
                log(f"{label}: FAILED {exc!r:.160}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wan,vit")
    ap.add_argument("--densities", default="1.0,0.5,0.25,0.15,0.08")
    ap.add_argument("--sweep", action="store_true", help="tune configs first (--sweep-keys) and use them")
    ap.add_argument("--sweep-keys", default=SWEEP_KEYS, help="comma-separated DxBLOCK_MxBLOCK_N to tune")
    ap.add_argument("--sweep-only", action="store_true", help="print the tuned configs, skip the table")
    ap.add_argument("--sweep-passes", default="fwd,dq,dkdv", help="comma-separated passes to sweep (fwd,dq,dkdv)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="KernelConfig change applied to the tuned config of every key the table times")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--scoring-only", action="store_true", help="time block scoring + assignment at the Wan shape")
    ap.add_argument("--variants", action="store_true", help="time KERNEL_VARIANTS at the Wan shape, density 0.15")
    ap.add_argument("--variant-block-ns", default="64,32", help="key block sizes for --variants")
    ap.add_argument("--variant-names", default=None,
                    help="';'-separated subset of KERNEL_VARIANTS (with --scoring-only: of the scoring variants); "
                         "names may contain commas")
    args = ap.parse_args()
    device = "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if args.scoring_only:
        q, k, _, _ = inputs(SHAPES["wan"], device, gen)
        print(f"scoring+assignment at wan (ms): {scoring_time(q, k)}")
        scoring_kernel_sweep(q, k, log, args.variant_names.split(";") if args.variant_names else None)
        return
    if args.variants:
        names = args.variant_names.split(";") if args.variant_names else None
        rows = kernel_variants(device, gen, log, [int(b) for b in args.variant_block_ns.split(",")], names)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return
    result = {"rows": [], "dense": {}, "stages": {}, "config": None}
    if args.sweep or args.sweep_only:
        for key in args.sweep_keys.split(","):
            dim, block_m, block_n = (int(x) for x in key.split("x"))
            cfg = sweep((dim, block_m, block_n), device, gen, log, tuple(args.sweep_passes.split(",")))
            tuning.MEASURED[(dim, block_m, block_n, "bfloat16")] = cfg  # this process only
            log(f"sweep best for {(dim, block_m, block_n)}: {cfg}")
        if args.sweep_only:
            return
    tuning.CHANGES = tuning.parse_overrides(args.set)
    result["config"] = repr(tuning.get_config(128, BLOCK_M, BLOCK_N, torch.bfloat16))

    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)

    for name in args.shapes.split(","):
        shape = SHAPES[name]
        batch, heads, length, dim = shape
        q, k, v, do = inputs(shape, device, gen)
        scale = 1 / math.sqrt(dim)
        fwd_flops = 4 * batch * heads * length * length * dim
        dense = {}
        for label, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def sdpa(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            dense[label] = time_pair(sdpa, q, k, v, do)
            log(f"{name} dense {label}: fwd {dense[label][0]:.3f} ms, fwd+bwd {dense[label][1]:.3f} ms")
        result["dense"][name] = dense
        n_qb, n_kb = math.ceil(length / BLOCK_M), math.ceil(length / BLOCK_N)
        for d in [float(x) for x in args.densities.split(",")]:
            levels = make_levels(batch, heads, n_qb, n_kb, MIXES[d], device, gen)
            dens = density(levels)

            def ours(q, k, v, levels=levels):
                return pyramid_attention(q, k, v, levels, BLOCK_M, BLOCK_N, scale, backend="triton")

            f, fb = time_pair(ours, q, k, v, do)
            row = dict(shape=name, target=d, density=dens, fwd=f, fb=fb,
                       fwd_tflops=fwd_flops * dens / f * 1e-9, fb_tflops=3.5 * fwd_flops * dens / fb * 1e-9)
            if flex is not None:
                mask, fdens = flex_block_mask(batch, heads, length, d, device, gen)

                def flex_fn(q, k, v, mask=mask):
                    return flex(q, k, v, block_mask=mask, scale=scale)

                row["flex_density"] = fdens
                row["flex_fwd"], row["flex_fb"] = time_pair(flex_fn, q, k, v, do)
            log(f"{name} d={d}: {json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()})}")
            result["rows"].append(row)
            if d in (0.15, 1.0) and name == "wan" or d == 0.15:
                cfg = tuning.get_config(dim, BLOCK_M, BLOCK_N, torch.bfloat16)
                result["stages"][f"{name}@{d}"] = st = stage_times(q, k, v, do, levels, cfg, scale)
                no_atomics = tuning.replace(cfg, dq_pooled_atomics=False)
                st["dq_pass_without_pooled_atomics"] = stage_times(q, k, v, do, levels, no_atomics, scale, "dq_pass")["dq_pass"]
                qd, kd, vd = q.detach(), k.detach(), v.detach()
                st["fwd_graph_replay"] = graph_time(lambda: triton_pyramid_attention(qd, kd, vd, levels, BLOCK_M, BLOCK_N, scale))
                st["fwd_eager_no_api_checks"] = bench(lambda: triton_pyramid_attention(qd, kd, vd, levels, BLOCK_M, BLOCK_N, scale))
                tuning.OVERRIDE = tuning.replace(cfg, heavy_first=not cfg.heavy_first)
                st[f"fwd_eager_no_api_checks_heavy_first_{not cfg.heavy_first}"] = bench(
                    lambda: triton_pyramid_attention(qd, kd, vd, levels, BLOCK_M, BLOCK_N, scale))
                st[f"fwd_bwd_heavy_first_{not cfg.heavy_first}"] = bench(fwd_bwd(ours, q, k, v, do))
                tuning.OVERRIDE = None
                log(f"stages {name}@{d}: " + ", ".join(f"{a} {b:.3f}" for a, b in st.items()))
        if name == "wan":
            result["scoring"] = scoring_time(q, k)
            log(f"scoring+assignment at wan: {result['scoring']}")
        del q, k, v, do
        torch.cuda.empty_cache()

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    print_table(result)


def print_table(result):
    lines = []
    hdr = (f"{'shape':5} {'dens':>5} | {'fwd ms':>7} {'f+b ms':>7} | {'fwd TF/s':>8} {'f+b TF/s':>8} | "
           f"{'fwd/cuDNN':>9} {'f+b/cuDNN':>9} | {'fwd/flash':>9} {'f+b/flash':>9} | "
           f"{'flex fwd':>8} {'flex f+b':>8} {'fwd/flex':>8} {'f+b/flex':>8}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for name, dense in result["dense"].items():
        (cf, cfb), (ff, ffb) = dense["cudnn"], dense["flash"]
        lines.append(f"{name:5} dense cuDNN fwd {cf:.3f} ms, fwd+bwd {cfb:.3f} ms; flash fwd {ff:.3f} ms, fwd+bwd {ffb:.3f} ms")
        for r in result["rows"]:
            if r["shape"] != name:
                continue
            flex = ""
            if "flex_fwd" in r:
                flex = (f"{r['flex_fwd']:8.3f} {r['flex_fb']:8.3f} {r['fwd'] / r['flex_fwd']:8.2f} "
                        f"{r['fb'] / r['flex_fb']:8.2f}")
            lines.append(
                f"{name:5} {r['density']:5.3f} | {r['fwd']:7.3f} {r['fb']:7.3f} | {r['fwd_tflops']:8.1f} "
                f"{r['fb_tflops']:8.1f} | {r['fwd'] / cf:9.3f} {r['fb'] / cfb:9.3f} | {r['fwd'] / ff:9.3f} "
                f"{r['fb'] / ffb:9.3f} | {flex}"
            )
    if "scoring" in result:
        lines.append(f"scoring+assignment at wan (ms): {result['scoring']}")
    lines.append(f"config: {result['config']}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
