"""The fused Triton block-scoring kernel (interpreted on CPU) against the PyTorch path."""

import math

import pytest
import torch
from psa_train.kernels.triton_block_scores import (
    block_logsumexp2,
    block_scores_triton,
    block_sums,
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


GPU_VARIANTS = [{}, {"loads": "contiguous"}, {"loads": "tma"}, {"scratch": "fp16"}, {"block_q": 64, "num_warps": 4}]


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

