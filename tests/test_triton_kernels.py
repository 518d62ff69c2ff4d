"""Triton pyramid attention against the float64 reference: outputs and dq, dk, dv.

CPU runs use the Triton interpreter. No TRITON_INTERPRET juggling is needed here: the kernels
choose the interpreter per launch when their tensors live on the CPU (kernels/triton_launch.py),
so the tests pass whatever other test modules imported first. Shapes are tiny (the interpreter
runs every program in Python); each case takes a few seconds on one core.

Tolerance (DESIGN.md §5, FlashAttention's rule): the kernel's error against float64 is at most
about twice the error of the same computation done by PyTorch in the input dtype (plus a small
absolute slack). GPU tests (`-m gpu`) use large shapes and METHOD.md's bar for bf16 (< 1e-2).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from psa_train.kernels import mean_pool, pyramid_attention, reference_pyramid_attention  # noqa: E402
from psa_train.kernels.block_lists import build_plan, with_transposed  # noqa: E402
from psa_train.kernels.gluon_support import on_hopper  # noqa: E402
from psa_train.kernels.triton_pyramid import build_pyramid  # noqa: E402

LEVELS = torch.tensor([0, 1, 2, 4, 8])


def random_levels(batch, heads, n_qb, n_kb, generator, device="cpu", empty_block=True):
    """Random map using every level; every row gets a level-1 block, one block row is empty."""
    lv = LEVELS[torch.randint(0, 5, (batch, heads, n_qb, n_kb), generator=generator)]
    cols = torch.randint(0, n_kb, (batch, heads, n_qb), generator=generator)
    lv.scatter_(-1, cols[..., None], 1)
    if empty_block and n_qb > 1:
        lv[0, -1, n_qb // 2] = 0
    return lv.to(device)


def lowp_attention(q, k, v, levels, block_m, block_n, sm_scale):
    """The pyramid attention of DESIGN.md §1 computed in the inputs' own dtype (dense mask)."""
    keys, values, bias, level_of, block_of = [], [], [], [], []
    for s in (1, 2, 4, 8):
        kp, counts = mean_pool(k, s)
        keys.append(kp)
        values.append(mean_pool(v, s)[0])
        bias.append(torch.log(counts.float()).to(q.dtype))
        rows = torch.arange(kp.shape[-2])
        level_of.append(torch.full_like(rows, s))
        block_of.append(rows * s // block_n)
    keys, values, bias = torch.cat(keys, -2), torch.cat(values, -2), torch.cat(bias)
    level_of, block_of = torch.cat(level_of), torch.cat(block_of)
    seen = levels.long()[..., block_of].repeat_interleave(block_m, dim=2)[:, :, : q.shape[-2]]
    allowed = seen == level_of
    logits = (q @ keys.transpose(-1, -2)) * sm_scale + bias
    any_key = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~any_key, 0.0)
    p = torch.softmax(logits, dim=-1) * any_key
    return p @ values


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run_case(batch, heads, lq, lk, dim, dtype, block_m, block_n, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=gen).to(device, dtype) for n in (lq, lk, lk))
    do = torch.randn(batch, heads, lq, dim, generator=gen).to(device, dtype)
    levels = random_levels(batch, heads, -(-lq // block_m), -(-lk // block_n), gen, device)
    scale = 1.0 / math.sqrt(dim)

    qt, kt, vt = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = pyramid_attention(qt, kt, vt, levels, block_m, block_n, scale, backend="triton")
    out.backward(do)
    got = [out, qt.grad, kt.grad, vt.grad]
    for t in got:
        assert t.dtype == dtype and torch.isfinite(t).all()

    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q, k, v))
    ref = reference_pyramid_attention(q64, k64, v64, levels, block_m, block_n, scale)
    ref.backward(do.double())
    want = [ref.detach(), q64.grad, k64.grad, v64.grad]
    return got, want, (q, k, v, do, levels, scale)


CPU_CASES = [
    # batch, heads, Lq, Lk, D, dtype, block_m, block_n
    (1, 2, 150, 200, 64, torch.bfloat16, 64, 32),  # tails on both sides, Lq != Lk
    (1, 1, 140, 130, 128, torch.float16, 128, 64),  # Lk tail of 2 tokens: short pooled groups
    (2, 1, 100, 100, 64, torch.float32, 64, 128),  # one partial key block, fp32
    (1, 2, 70, 45, 128, torch.bfloat16, 64, 32),  # short keys: tail block inside level-8 groups
    (1, 2, 128, 256, 64, torch.bfloat16, 64, 64),  # no tails: every TMA tile takes the bias-free step
]


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"L{c[2]}x{c[3]}-D{c[4]}-{str(c[5])[6:]}-{c[6]}x{c[7]}")
def test_triton_matches_reference_cpu(case):
    batch, heads, lq, lk, dim, dtype, bm, bn = case
    got, want, (q, k, v, do, levels, scale) = run_case(batch, heads, lq, lk, dim, dtype, bm, bn, seed=lq + lk)
    # the same computation by PyTorch in the input dtype: the error budget
    ql, kl, vl = (t.clone().requires_grad_(True) for t in (q, k, v))
    low = lowp_attention(ql, kl, vl, levels, bm, bn, scale)
    low.backward(do)
    lows = [low.detach(), ql.grad, kl.grad, vl.grad]
    for name, g, w, lo in zip(("out", "dq", "dk", "dv"), got, want, lows):
        err, budget = rel_err(g, w), 2.0 * rel_err(lo, w) + 1e-4
        assert err <= budget, f"{name}: error {err:.2e} > budget {budget:.2e}"


@pytest.mark.parametrize(
    "change,block_n",
    [({"heavy_first": False}, 32), ({"fwd_pooled_tma": False, "dq_pooled_tma": True, "fwd_q_tma": False}, 64),
     ({"fwd_tma": False, "dq_tma": False}, 128), ({"fwd_clean_levels": (), "dq_clean_levels": ()}, 64)],
    ids=["plain-grid-order", "pooled-tile-swap", "no-level1-tma", "every-tile-masked"],
)
def test_config_variants_compute_the_same_function_cpu(change, block_n):
    """Plain grid order (no ranking launches); gathered pooled tiles and a pointer-loaded query tile in
    the forward with per-entry TMA tiles in the dQ pass; pointer loads on level 1; the masked
    step on every tile: each is the same function (the defaults: TMA for the forward's query
    tile and pooled entries, the bias-free step on whole key blocks)."""
    from psa_train.kernels import tuning

    tuning.OVERRIDE = tuning.replace(tuning.default_config(64, 64, block_n, torch.bfloat16), **change)
    try:
        got, want, _ = run_case(1, 2, 130, 300, 64, torch.bfloat16, 64, block_n, seed=5)  # tails meet the next head
    finally:
        tuning.OVERRIDE = None
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1.5e-2


@pytest.mark.parametrize("pooled_tma", [True, False], ids=["tma-pooled", "gathered-pooled"])
def test_paired_tiles_compute_the_same_function_cpu(pooled_tma):
    """Two clean tiles per softmax update on every level (TMA entries and gathered tiles of
    several small pooled blocks), with rows long enough for several pairs per level, odd
    leftovers and a partial last key block on each level's masked path."""
    from psa_train.kernels import tuning

    base = tuning.default_config(64, 64, 32, torch.bfloat16)
    tuning.OVERRIDE = tuning.replace(base, fwd_tiles=(32, 16, 16, 16), fwd_pooled_tma=pooled_tma,
                                     fwd_pair_levels=(1, 2, 4, 8), fwd_clean_levels=(1, 2, 4, 8))
    try:
        got, want, _ = run_case(1, 2, 130, 1400, 64, torch.bfloat16, 64, 32, seed=7)
    finally:
        tuning.OVERRIDE = None
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1.5e-2


def test_empty_rows_give_zeros_and_zero_grads_cpu():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 96, 64, generator=gen, dtype=torch.bfloat16).requires_grad_(True) for _ in range(3))
    levels = torch.zeros(1, 2, 2, 3, dtype=torch.long)
    levels[0, 0, 0, 1] = 4  # one query block of head 0 sees one pooled block; the rest is empty
    out = pyramid_attention(q, k, v, levels, 64, 32, backend="triton")
    out.float().square().sum().backward()
    assert torch.isfinite(out).all() and out[0, 1].abs().max() == 0 and out[0, 0, 64:].abs().max() == 0
    assert out[0, 0, :64].abs().max() > 0
    assert q.grad[0, 1].abs().max() == 0 and k.grad[0, 1].abs().max() == 0 and v.grad[0, 1].abs().max() == 0
    # only key block 1 (tokens 32..63) was seen, and only by head 0
    assert k.grad[0, 0, :32].abs().max() == 0 and k.grad[0, 0, 64:].abs().max() == 0
    assert v.grad[0, 0, 32:64].abs().max() > 0
    for t in (q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()


def test_block_lists_match_a_python_scan():
    gen = torch.Generator().manual_seed(2)
    levels = LEVELS[torch.randint(0, 5, (2, 3, 5, 37), generator=gen)]
    forward_only = build_plan(levels, 64, transposed=False)
    assert forward_only.idx_t is None and forward_only.cnt_t is None and forward_only.order_t is None
    plan = with_transposed(forward_only, levels)
    lv = levels.reshape(6, 5, 37)
    for bh in range(6):
        for i in range(5):
            expect = [j for s in (1, 2, 4, 8) for j in range(37) if lv[bh, i, j] == s]
            counts = [int((lv[bh, i] == s).sum()) for s in (1, 2, 4, 8)]
            assert plan.cnt[bh, i].tolist() == counts
            assert plan.idx[bh, i, : len(expect)].tolist() == expect
        work = (plan.cnt[bh].long() * torch.tensor([64, 32, 16, 8])).sum(-1)
        assert plan.order[bh].tolist() == torch.argsort(work, descending=True, stable=True).tolist()
        for j in range(37):
            expect = [i for i in range(5) if lv[bh, i, j] == 1]
            assert plan.cnt_t[bh, j] == len(expect)
            assert plan.idx_t[bh, j, : len(expect)].tolist() == expect


@pytest.mark.parametrize("n", [1, 37, 300])
def test_heavy_first_order_is_a_stable_descending_argsort(n):
    """The ranking kernel: many ties (they keep block order), n past one program's block."""
    from psa_train.kernels.block_lists import _heaviest_first

    work = torch.randint(0, 6, (3, n), generator=torch.Generator().manual_seed(n), dtype=torch.int32)
    order = _heaviest_first(work, True)
    assert order.dtype == torch.int32
    assert order.tolist() == torch.argsort(work, dim=1, descending=True, stable=True).tolist()


def test_bad_level_values_raise_on_the_triton_path():
    q, k, v = (torch.randn(1, 1, 64, 64, dtype=torch.bfloat16) for _ in range(3))
    levels = torch.tensor([[[[1, 3]]]])
    with pytest.raises(ValueError, match="levels may only hold"):
        pyramid_attention(q, k, v, levels, 64, 32, backend="triton")


def test_transposed_lists_are_built_only_for_a_backward(monkeypatch):
    """The forward builds only its own lists; the backward's transposed lists come with the
    backward, so a forward without gradients (inference, checkpointing's first pass) skips them."""
    from psa_train.kernels import triton_autograd

    calls = []
    monkeypatch.setattr(triton_autograd, "with_transposed", lambda *a, **kw: calls.append(1) or with_transposed(*a, **kw))
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, 64, 64, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    levels = random_levels(1, 1, 1, 2, gen, empty_block=False)
    with torch.no_grad():
        pyramid_attention(q, k, v, levels, 64, 32, backend="triton")
    assert calls == []
    q.requires_grad_(True)
    pyramid_attention(q, k, v, levels, 64, 32, backend="triton").sum().backward()
    assert calls == [1] and torch.isfinite(q.grad).all()


def test_pyramid_matches_mean_pool():
    gen = torch.Generator().manual_seed(3)
    k, v = (torch.randn(1, 2, 203, 64, generator=gen) for _ in range(2))
    for (kp, vp), s in zip(build_pyramid(k, v), (2, 4, 8)):
        torch.testing.assert_close(kp, mean_pool(k, s)[0])
        torch.testing.assert_close(vp, mean_pool(v, s)[0])


def test_dq_pass_without_level_one_is_the_pooled_part():
    """The Triton dQ pass with level 1 left out (what the Gluon level-1 kernel completes on Hopper)
    plus a pass over the level-1 pairs alone gives the full dQ (same lse and delta)."""
    from psa_train.kernels import tuning
    from psa_train.kernels.triton_backward import launch_delta, launch_dq_triton, pooled_grad_buffers
    from psa_train.kernels.triton_forward import pyramid_forward

    gen = torch.Generator().manual_seed(12)
    block_m, block_n = 64, 32
    q, k, v, do = (torch.randn(1, 2, n, 64, generator=gen, dtype=torch.float32) for n in (150, 200, 200, 150))
    levels = random_levels(1, 2, 3, 7, gen)
    cfg = tuning.get_config(64, block_m, block_n, q.dtype)
    plan = build_plan(levels, block_n, cfg.heavy_first)
    pyramid = build_pyramid(k, v)
    out, lse = pyramid_forward(q, k, v, pyramid, plan, block_m, block_n, 0.125, cfg)
    delta = launch_delta(out, do)

    def dq(plan, level1=True):
        return launch_dq_triton(q, k, v, do, lse, delta, pyramid, pooled_grad_buffers(k), plan, block_m, block_n,
                                0.125, cfg, level1)

    pooled_part = dq(plan, level1=False)
    level1_part = dq(build_plan(torch.where(levels == 1, levels, 0), block_n, cfg.heavy_first))
    assert pooled_part.dtype == torch.float32 and pooled_part.abs().max() > 0
    torch.testing.assert_close(pooled_part + level1_part, dq(plan), rtol=1e-4, atol=1e-5)


def test_dkdv_fold_reads_the_permuted_pooled_order():
    """With `permuted`, the fold reads the pooled gradients in the column order the Gluon
    pooled-level dQ kernel writes them (`pooled_column`): same dK, dV as the natural order."""
    from psa_train.kernels import tuning
    from psa_train.kernels.triton_backward import launch_dkdv, pooled_grad_buffers

    gen = torch.Generator().manual_seed(21)
    block_m, block_n, dim = 64, 32, 64
    q, k, v, do = (torch.randn(1, 2, n, dim, generator=gen) for n in (150, 200, 200, 150))
    levels = random_levels(1, 2, 3, 7, gen)
    cfg = tuning.get_config(dim, block_m, block_n, q.dtype)
    plan = build_plan(levels, block_n, cfg.heavy_first)
    lse, delta = (torch.randn(1, 2, 150, generator=gen) for _ in range(2))
    natural = [torch.randn(b.shape, generator=gen) for b in pooled_grad_buffers(k)]
    col = torch.arange(dim)
    order = 16 * (col // 16) + 4 * ((col % 8) // 2) + 2 * ((col // 8) % 2) + col % 2
    assert torch.equal(order.sort().values, col)  # a permutation, within each 16 columns
    permuted = [torch.empty_like(b) for b in natural]
    for p, n in zip(permuted, natural):
        p[..., order] = n
    want = launch_dkdv(q, k, v, do, lse, delta, natural, plan, block_m, block_n, 0.125, cfg, permuted=False)
    got = launch_dkdv(q, k, v, do, lse, delta, permuted, plan, block_m, block_n, 0.125, cfg, permuted=True)
    wrong = launch_dkdv(q, k, v, do, lse, delta, permuted, plan, block_m, block_n, 0.125, cfg, permuted=False)
    for g, w, x in zip(got, want, wrong):
        torch.testing.assert_close(g, w)
        assert (x - w).abs().max() > 1e-3  # the test can tell the orders apart


# ---------------------------------------------------------------------------------- GPU
GPU_CASES = [
    (2, 4, 4000, 4100, 64, torch.bfloat16, 128, 32),
    (1, 4, 8192, 8192, 128, torch.float16, 64, 128),
    (1, 2, 32760, 32760, 128, torch.bfloat16, 128, 64),
    # tuned entries that pair clean tiles: every level (128x128x32, 64x128x64), pooled levels
    (1, 4, 8192, 8200, 128, torch.bfloat16, 128, 32),
    (2, 4, 4000, 4100, 64, torch.bfloat16, 128, 64),
    (1, 4, 8192, 8192, 128, torch.bfloat16, 128, 128),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"L{c[2]}x{c[3]}-D{c[4]}-{str(c[5])[6:]}-{c[6]}x{c[7]}")
def test_triton_matches_reference_gpu(case):
    batch, heads, lq, lk, dim, dtype, bm, bn = case
    got, want, _ = run_case(batch, heads, lq, lk, dim, dtype, bm, bn, seed=7, device="cuda")
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        err = rel_err(g, w)
        assert err < 1e-2, f"{name}: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_empty_rows_and_fp32():
    got, want, (q, *_rest, levels, _) = run_case(1, 2, 1000, 1500, 64, torch.float32, 64, 64, seed=9, device="cuda")
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-4
    empty = (levels == 0).all(-1).repeat_interleave(64, dim=2)[..., :1000]
    assert empty.any() and got[0][empty].abs().max() == 0 and got[1][empty].abs().max() == 0


GLUON_DKDV_CASES = [
    (2, 3, 4000, 4100, 64, torch.bfloat16, 128, 64),  # 65 key blocks: one consumer of the last program idle
    (1, 4, 8192, 8200, 128, torch.bfloat16, 128, 64),  # the Wan preset's tiles, a key tail of 8
    (1, 4, 3000, 2900, 128, torch.float16, 64, 128),  # two 64-key sub-blocks per key block (dQ: Triton)
    (1, 4, 3000, 2900, 128, torch.float16, 128, 128),  # two 64-key steps per level-1 entry in the dQ kernel
]


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and on_hopper(torch.device("cuda"))),
                    reason="the Gluon backward kernels need a Hopper GPU and a Triton with Gluon")
@pytest.mark.parametrize("pooled", [False, True], ids=["pooled-triton", "pooled-gluon"])
@pytest.mark.parametrize("case", GLUON_DKDV_CASES, ids=lambda c: f"L{c[2]}x{c[3]}-D{c[4]}-{c[6]}x{c[7]}")
def test_gluon_backward_matches_reference_and_triton(case, pooled, monkeypatch):
    """The Gluon backward kernels, the dQ pass's pooled levels by the Triton or the Gluon kernel."""
    from psa_train.kernels import gluon_backward, tuning

    batch, heads, lq, lk, dim, dtype, bm, bn = case
    assert gluon_backward.supported(torch.empty(1, 1, 1, dim, dtype=dtype, device="cuda"), bm, bn)
    monkeypatch.setattr(tuning, "CHANGES", {"dkdv_gluon": True, "dq_gluon": True, "dq_pooled_gluon": pooled})
    got, want, _ = run_case(batch, heads, lq, lk, dim, dtype, bm, bn, seed=11, device="cuda")
    monkeypatch.setattr(tuning, "CHANGES", {"dkdv_gluon": False, "dq_gluon": False})
    triton_got, _, _ = run_case(batch, heads, lq, lk, dim, dtype, bm, bn, seed=11, device="cuda")
    for name, g, w, t in zip(("out", "dq", "dk", "dv"), got, want, triton_got):
        assert rel_err(g, w) < 1e-2, f"{name}: relative error {rel_err(g, w):.2e}"
        assert rel_err(g, t) < 2e-3, f"{name} differs from the Triton passes: {rel_err(g, t):.2e}"


GLUON_FWD_CASES = [
    # batch, heads, Lq, Lk, D, dtype, block_n, key rows per tile
    (2, 3, 4000, 4100, 64, torch.bfloat16, 64, 64),  # tails on both sides, D=64
    (1, 4, 8192, 8200, 128, torch.bfloat16, 64, 64),  # the measured tiles, a key tail of 8
    (1, 4, 8192, 8200, 128, torch.bfloat16, 64, 128),  # two level-1 entries, sixteen level-8 per tile
    (1, 4, 3000, 2900, 128, torch.float16, 128, 64),  # two tiles per level-1 entry
    (1, 2, 3000, 2900, 64, torch.float16, 128, 128),
]


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and on_hopper(torch.device("cuda"))),
                    reason="the Gluon forward needs a Hopper GPU and a Triton with Gluon")
@pytest.mark.parametrize("pingpong", [False, True], ids=["together", "pingpong"])
@pytest.mark.parametrize("case", GLUON_FWD_CASES, ids=lambda c: f"L{c[2]}x{c[3]}-D{c[4]}-bn{c[6]}-tile{c[7]}")
def test_gluon_forward_matches_reference_and_triton(case, pingpong, monkeypatch):
    """Output, LSE and (through the backward, which reads the LSE) gradients of the Gluon forward,
    its consumers issuing products together or in turns."""
    from dataclasses import replace

    from psa_train.kernels import gluon_forward, tuning
    from psa_train.kernels.triton_forward import pyramid_forward

    batch, heads, lq, lk, dim, dtype, bn, tile = case
    gluon = {"fwd_gluon": True, "fwd_gluon_tile": tile, "fwd_gluon_stages": 3 if tile == 64 else 2,
             "fwd_gluon_pingpong": pingpong}
    monkeypatch.setattr(tuning, "CHANGES", gluon)
    got, want, (q, k, v, _, levels, scale) = run_case(batch, heads, lq, lk, dim, dtype, 128, bn, seed=13,
                                                      device="cuda")
    assert gluon_forward.supported(q, 128, bn, scale)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert rel_err(g, w) < 1e-2, f"{name}: relative error {rel_err(g, w):.2e}"
    monkeypatch.setattr(tuning, "CHANGES", {})
    cfg = tuning.get_config(dim, 128, bn, dtype)
    plan = build_plan(levels, bn, cfg.heavy_first, transposed=False)
    pyramid = build_pyramid(k, v)
    out_g, lse_g = pyramid_forward(q, k, v, pyramid, plan, 128, bn, scale, replace(cfg, **gluon))
    out_t, lse_t = pyramid_forward(q, k, v, pyramid, plan, 128, bn, scale, replace(cfg, fwd_gluon=False))
    assert rel_err(out_g, out_t.double()) < 2e-3
    assert (lse_g - lse_t).abs().max().item() < 1e-3
