"""The fused Triton block-scoring kernel (interpreted on CPU) against the PyTorch path."""

import math

import pytest
import torch
from psa_train.kernels.gluon_support import on_hopper
from psa_train.kernels.triton_block_scores import (
    block_logsumexp2,
    block_scores_triton,
    block_sums,
    pool_scores,
)

from psa_train.attention import block_scores
from psa_train.attention.scoring import _block_lse_torch, _sample_tables, padded_samples


def _qk(length_q, length_k, dim, seed, heads=2, dtype=torch.float32, batch=1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length_q, dim, generator=gen)
    k = torch.randn(batch, heads, length_k, dim, generator=gen) + 0.5 * q.mean(2, keepdim=True)
    return q.to(dtype), k.to(dtype)


def _fused(q, k, block_m, block_n, fraction, reduction, normalize=True, **options):
    """The kernel with explicit options, on the tables block_scores would use."""
    qt = _sample_tables(q.shape[2], block_m, fraction, str(q.device))
    kt = _sample_tables(k.shape[2], block_n, fraction, str(k.device))
    scale = 1 / math.sqrt(q.shape[-1])
    options = {"k_full_blocks": kt.full_blocks, **options}
    return block_scores_triton(q, k, qt.rows, qt.valid, kt.rows, kt.valid, scale, reduction, normalize,
                               **options)


@pytest.mark.parametrize(
    "length_q,length_k,block_m,block_n,fraction,dim",
    [(300, 300, 64, 32, 0.25, 64), (256, 200, 128, 64, 0.25, 128), (130, 150, 64, 64, 0.3, 64)],
)
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_triton_scores_match_torch(length_q, length_k, block_m, block_n, fraction, dim, reduction):
    q, k = _qk(length_q, length_k, dim, length_q + length_k)
    args = (q, k, block_m, block_n, fraction, reduction)
    expected = block_scores(*args, backend="torch")
    got = block_scores(*args, backend="triton")
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["max", "mean"])
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_scores_take_bfloat16_inputs(reduction, normalize):
    q, k = _qk(256, 230, 64, 0, heads=1, dtype=torch.bfloat16)
    args = (q, k, 64, 32, 0.25, reduction)
    expected = block_scores(*args, normalize=normalize, backend="torch")  # float32 of the same values
    got = block_scores(*args, normalize=normalize, backend="triton")
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "length_q,length_k,block_m,block_n,fraction,dim,options",
    [
        # several query blocks per program, the last program half past the end, tails both sides
        (300, 270, 32, 32, 0.25, 64, {"block_q": 64, "tile_slots": 32, "chunk": 16}),
        # more slots per query block than block_q: one query block per program
        (200, 130, 64, 64, 1.0, 64, {"block_q": 16, "tile_slots": 64, "chunk": 16}),
        # key blocks wider than a tile; head dim 128
        (150, 300, 64, 128, 0.5, 128, {"block_q": 32, "tile_slots": 16}),
        (190, 210, 64, 32, 0.3, 64, {"loads": "contiguous", "block_q": 32}),
        (190, 210, 64, 32, 0.3, 64, {"loads": "tma", "block_q": 32, "tile_slots": 64}),
        (190, 210, 64, 32, 0.3, 128, {"block_q": 32, "num_stages": 3}),
    ],
)
@pytest.mark.parametrize("reduction", ["max", "mean"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_variants_match_torch(length_q, length_k, block_m, block_n, fraction, dim, options, reduction,
                                    normalize):
    q, k = _qk(length_q, length_k, dim, length_q * length_k)
    args = (q, k, block_m, block_n, fraction, reduction)
    expected = block_scores(*args, normalize=normalize, backend="torch")
    got = _fused(*args, normalize=normalize, **options)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [{"scratch": "fp16"}, {"scratch": "fp16", "loads": "tma", "tile_slots": 64}])
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_half_scratch_stays_close(options, reduction):
    q, k = _qk(270, 260, 64, 5, dtype=torch.bfloat16)
    args = (q, k, 64, 32, 0.25, reduction)
    expected = block_scores(*args, backend="torch")
    got = _fused(*args, block_q=32, **options)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("block_n,fraction", [(32, 0.25), (16, 0.5)])
def test_unmasked_tiles_change_nothing(block_n, fraction):
    """Tiles of fully sampled key blocks skip masking; masking them all must give the same."""
    q, k = _qk(200, 16 * 24 + 5, 64, 9)
    kt = _sample_tables(k.shape[2], block_n, fraction, "cpu")
    assert kt.full_blocks == kt.rows.shape[0] - 1  # all but the tail
    args = (q, k, 64, block_n, fraction, "max")
    everywhere = _fused(*args, block_q=32, tile_slots=32, k_full_blocks=0)
    torch.testing.assert_close(_fused(*args, block_q=32, tile_slots=32), everywhere, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(everywhere, block_scores(*args, backend="torch"), rtol=1e-4, atol=1e-6)


def test_batches_strided_inputs_and_bool_validity():
    q, k = _qk(200, 180, 64, 11, heads=3, batch=2)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, H, L, D] view of [B, L, H, D]
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)
    expected = block_scores(q, k, 64, 32, backend="torch")
    qr, qv = padded_samples(200, 64, 0.25)
    kr, kv = padded_samples(180, 32, 0.25)
    for loads in ("contiguous", "tma"):
        got = block_scores_triton(q_t, k_t, qr, qv, kr, kv, 0.125, "max", True, loads=loads, block_q=32)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_bad_options_are_refused():
    q, k = _qk(64, 64, 64, 0, heads=1)
    with pytest.raises(TypeError, match="unknown"):
        _fused(q, k, 64, 32, 0.25, "max", blockq=64)
    with pytest.raises(ValueError, match="loads"):
        _fused(q, k, 64, 32, 0.25, "max", loads="texture")
    with pytest.raises(ValueError, match="scratch"):
        _fused(q, k, 64, 32, 0.25, "max", scratch="bf16")
    with pytest.raises(ValueError, match="pass1 must"):
        _fused(q, k, 64, 32, 0.25, "max", pass1="cuda")
    with pytest.raises(ValueError, match="gluon_pool"):
        _fused(q, k, 64, 32, 0.25, "max", gluon_pool="fused")
    with pytest.raises(ValueError, match="Hopper"):  # the Gluon pass 1 never runs on CPU tensors
        _fused(q, k, 64, 32, 0.25, "max", pass1="gluon")


def test_auto_pass1_falls_back_to_triton_off_hopper():
    q, k = _qk(200, 180, 64, 3)
    expected = _fused(q, k, 64, 32, 0.25, "max", block_q=32)
    torch.testing.assert_close(_fused(q, k, 64, 32, 0.25, "max", block_q=32, pass1="auto"), expected,
                               rtol=0, atol=0)


@pytest.mark.parametrize("block_n,fraction", [(32, 0.25), (64, 0.25), (128, 0.25), (64, 0.3)])
def test_block_logsumexp_matches_torch(block_n, fraction):
    q, k = _qk(200, 300, 64, block_n)
    q_rows, _ = padded_samples(200, 64, fraction)
    k_rows, k_valid = padded_samples(300, block_n, fraction)
    args = (q, k, q_rows.flatten(), k_rows.flatten(), k_valid.flatten(), k_rows.shape[1], 0.125)
    expected = _block_lse_torch(*args, chunk_elements=1 << 20) / math.log(2.0)
    got = block_logsumexp2(*args)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    _, _, row_lse = block_sums(*args)
    torch.testing.assert_close(row_lse, torch.logsumexp(expected * math.log(2.0), -1) / math.log(2.0))


@pytest.mark.parametrize("block_n,fraction,reduction,normalize", [(32, 0.25, "max", True), (64, 0.3, "mean", False)])
def test_separate_pooling_launch_matches_fused(block_n, fraction, reduction, normalize):
    """pool_scores (what follows the Gluon pass 1) on a pass 1's outputs gives the fused kernel's scores."""
    q, k = _qk(300, 280, 64, 21, batch=2)
    qt = _sample_tables(300, 64, fraction, "cpu")
    kt = _sample_tables(280, block_n, fraction, "cpu")
    slots = kt.rows.shape[1]
    sums, maxes, lse = block_sums(q, k, qt.rows.flatten(), kt.rows.flatten(), kt.valid.flatten(), slots, 0.125,
                                  tile_slots=64)
    got = pool_scores(sums, maxes, lse, qt.valid.flatten(), qt.rows.shape[1], 64 // slots, reduction, normalize,
                      block_q=32, chunk=16)
    expected = _fused(q, k, 64, block_n, fraction, reduction, normalize, tile_slots=64, block_q=32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


GPU_VARIANTS = [{}, {"loads": "contiguous"}, {"loads": "tma"}, {"scratch": "fp16"}, {"block_q": 64, "num_warps": 4},
                {"pass1": "triton"}]
needs_hopper = pytest.mark.skipif(not (torch.cuda.is_available() and on_hopper(torch.device("cuda"))),
                                  reason="the Gluon pass 1 needs a Hopper GPU and a Triton with Gluon")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("length,block_n", [(32760, 64), (32760, 32), (1568, 64)])
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_compiled_scores_match_float32_torch_on_gpu(length, block_n, reduction):
    gen = torch.Generator(device="cuda").manual_seed(length)
    q = torch.randn(1, 12, length, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    k = torch.randn(1, 12, length, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    args = (q, k, 128, block_n, 0.25, reduction)
    expected = block_scores(*args, backend="torch")
    got = block_scores(*args, backend="auto")  # the compiled kernel, default options
    relative = (got - expected).norm() / expected.norm()
    assert relative < 1e-2, relative
    for options in GPU_VARIANTS[1:]:
        got = _fused(*args, **options)
        relative = (got - expected).norm() / expected.norm()
        assert relative < 1e-2, (options, relative)



@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(
    "batch,length_q,length_k,block_n,fraction,dim,dtype",
    [
        (1, 32760, 32760, 64, 0.25, 128, torch.bfloat16),  # the Wan shape
        (2, 1000, 2100, 32, 0.25, 64, torch.float16),  # 16 blocks per tile; tails both sides
        (1, 3000, 1500, 128, 0.25, 128, torch.bfloat16),  # 4 blocks per tile
        (2, 700, 900, 64, 0.3, 64, torch.bfloat16),  # uneven sampling: most tiles masked
        (1, 500, 600, 16, 0.25, 128, torch.float16),  # 4 slots per block: 32 blocks per tile
    ],
)
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_gluon_pass1_matches_triton_on_hopper(batch, length_q, length_k, block_n, fraction, dim, dtype, reduction):
    gen = torch.Generator(device="cuda").manual_seed(length_q + block_n)
    q = torch.randn(batch, 3, length_q, dim, device="cuda", generator=gen).to(dtype)
    k = (torch.randn(batch, 3, length_k, dim, device="cuda", generator=gen) + 0.5 * q.float().mean(2, True)).to(dtype)
    args = (q, k, 128, block_n, fraction, reduction)
    qt = _sample_tables(length_q, 128, fraction, "cuda")
    kt = _sample_tables(length_k, block_n, fraction, "cuda")
    triton_scores = _fused(*args, pass1="triton", scratch="fp32")
    for options in ({"scratch": "fp32"}, {"scratch": "fp16"}, {"gluon_consumers": 4, "gluon_tile": 64},
                    {"gluon_consumers": 4, "gluon_tile": 128}, {"gluon_consumers": 2, "gluon_tile": 0}):
        got = _fused(*args, pass1="gluon", **options)
        relative = (got - triton_scores).norm() / triton_scores.norm()
        assert relative < 2e-3, (options, relative)
    in_place = _fused(*args, pass1="gluon", row_strides=(qt.stride, kt.stride))  # rows read in place where strided
    assert torch.equal(in_place, _fused(*args, pass1="gluon"))
    for options in ({}, {"gluon_consumers": 2, "gluon_tile": 0}, {"row_strides": (qt.stride, kt.stride)}):
        by_gluon = _fused(*args, pass1="gluon", gluon_pool="gluon", **options)
        torch.testing.assert_close(by_gluon, _fused(*args, pass1="gluon", gluon_pool="triton", **options),
                                   rtol=1e-5, atol=1e-7)
    sums_args = (q, k, qt.rows.flatten(), kt.rows.flatten(), kt.valid.flatten(), kt.rows.shape[1], dim ** -0.5)
    _, _, lse_triton = block_sums(*sums_args)
    _, _, lse_gluon = block_sums(*sums_args, pass1="gluon")
    torch.testing.assert_close(lse_gluon, lse_triton, rtol=1e-4, atol=1e-3)


def test_sample_tables_report_even_strides():
    """The default quarter of 64- and 128-token blocks samples every fourth token from the third
    (the Wan length included, whose last blocks are shorter); 0.3 of a block is uneven."""
    from psa_train.kernels.triton_block_scores import _rows_in_place

    for length, block in ((32760, 64), (32760, 128), (1000, 64)):
        tables = _sample_tables(length, block, 0.25, "cpu")
        assert tables.stride == (2, 4)
        first, step = tables.stride
        slot = torch.arange(tables.rows.numel())
        assert torch.equal(tables.rows.reshape(-1)[tables.valid.reshape(-1)],
                           (first + step * slot)[tables.valid.reshape(-1)])
    assert _sample_tables(700, 64, 0.3, "cpu").stride is None
    x = torch.randn(2, 3, 40, 8)
    tables = _sample_tables(40, 8, 0.25, "cpu")
    view = _rows_in_place(x, tables.stride)
    assert view.data_ptr() == x[0, 0, 2].data_ptr()  # no copy
    torch.testing.assert_close(view, x.index_select(2, tables.rows.reshape(-1)[tables.valid.reshape(-1)]))
    assert _rows_in_place(x, None) is None and _rows_in_place(x.transpose(2, 3), tables.stride) is None


@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize(
    "block_m,fraction,normalize",
    [(64, 0.25, True), (32, 0.25, False), (128, 0.5, True), (256, 0.5, True), (16, 0.25, True)],
)
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_gluon_pooling_matches_the_triton_pooling(block_m, fraction, normalize, reduction):
    """Query blocks of 16, 8, 64 and 4 sampled rows pooled by the Gluon kernel; 128 rows (block_m
    256 at a half) do not fit its 64-row programs and take the Triton pooling."""
    gen = torch.Generator(device="cuda").manual_seed(block_m)
    q = torch.randn(2, 3, 2500, 64, device="cuda", generator=gen).to(torch.bfloat16)
    k = (torch.randn(2, 3, 1900, 64, device="cuda", generator=gen) + 0.5 * q.float().mean(2, True)).to(torch.bfloat16)
    args = (q, k, block_m, 64, fraction, reduction, normalize)
    expected = _fused(*args, pass1="triton", scratch="fp32")
    by_triton = _fused(*args, pass1="gluon", gluon_pool="triton")
    assert (by_triton - expected).norm() / expected.norm() < 2e-3
    torch.testing.assert_close(_fused(*args, pass1="gluon", gluon_pool="gluon"), by_triton, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 32), (8, 64), (4, 32), (2, 16)])
def test_gluon_pooling_layout_fits_every_query_block_size(shape):
    """Each thread of the Gluon pooling holds at most the shape's rows x blocks (where a query block
    has that many rows); 4 warps and 32 lanes cover 64 rows; a vector stays within a key tile."""
    from psa_train.kernels.gluon_block_scores import ROWS, _pool_shape, can_pool

    rows_cap, values_cap = shape
    for q_slots in (1, 2, 4, 8, 16, 32, 64):
        assert can_pool(q_slots)
        for blocks_per_tile in (1, 2, 4, 8, 16, 32):
            vec, group_warps, slot_lanes = _pool_shape(q_slots, blocks_per_tile, shape)
            groups = ROWS // q_slots
            rows_per_thread = groups // group_warps * q_slots // slot_lanes
            assert group_warps in (1, 2, 4) and groups % group_warps == 0 and 32 % slot_lanes == 0
            assert q_slots // slot_lanes <= rows_cap and rows_per_thread * vec <= max(values_cap, rows_per_thread)
            assert blocks_per_tile % vec == 0 and vec <= 8, (q_slots, blocks_per_tile)
    assert not can_pool(128)

