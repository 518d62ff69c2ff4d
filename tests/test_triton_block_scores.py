"""The Triton block-scoring kernel (interpreted on CPU) against the PyTorch path."""

import pytest
import torch

from psa_train.attention import block_scores


@pytest.mark.parametrize(
    "length_q,length_k,block_m,block_n,fraction,dim",
    [(300, 300, 64, 32, 0.25, 64), (256, 200, 128, 64, 0.25, 128), (130, 150, 64, 64, 0.3, 64)],
)
@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_triton_scores_match_torch(length_q, length_k, block_m, block_n, fraction, dim, reduction):
    gen = torch.Generator().manual_seed(length_q + length_k)
    q = torch.randn(1, 2, length_q, dim, generator=gen)
    k = torch.randn(1, 2, length_k, dim, generator=gen) + 0.5 * q.mean(2, keepdim=True)
    args = (q, k, block_m, block_n, fraction, reduction)
    expected = block_scores(*args, backend="torch")
    got = block_scores(*args, backend="triton")
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_triton_scores_take_bfloat16_inputs():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 256, 64, generator=gen).bfloat16()
    k = torch.randn(1, 1, 256, 64, generator=gen).bfloat16()
    expected = block_scores(q, k, 64, 32, 0.25, "max", backend="torch")  # float32 of the same values
    got = block_scores(q, k, 64, 32, 0.25, "max", backend="triton")
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)



@pytest.mark.parametrize("segment_sum", ["reshape", "dot"])
@pytest.mark.parametrize("block_n,fraction", [(32, 0.25), (64, 0.25), (128, 0.25), (64, 0.3)])
def test_block_logsumexp_variants_match_torch(segment_sum, block_n, fraction):
    import math

    from psa_train.attention.scoring import _block_lse_torch, padded_samples
    from psa_train.kernels.triton_block_scores import block_logsumexp2

    gen = torch.Generator().manual_seed(block_n)
    q = torch.randn(1, 2, 200, 64, generator=gen)
    k = torch.randn(1, 2, 300, 64, generator=gen)
    q_rows, _ = padded_samples(200, 64, fraction)
    k_rows, k_valid = padded_samples(300, block_n, fraction)
    args = (q, k, q_rows.flatten(), k_rows.flatten(), k_valid.flatten(), k_rows.shape[1], 0.125)
    expected = _block_lse_torch(*args, chunk_elements=1 << 20) / math.log(2.0)
    got = block_logsumexp2(*args, segment_sum=segment_sum)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("length,block_n", [(32760, 64), (32760, 32), (1568, 64)])
def test_compiled_scores_match_float32_torch_on_gpu(length, block_n):
    gen = torch.Generator(device="cuda").manual_seed(length)
    q = torch.randn(1, 12, length, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    k = torch.randn(1, 12, length, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    expected = block_scores(q, k, 128, block_n, 0.25, "max", backend="torch")
    got = block_scores(q, k, 128, block_n, 0.25, "max", backend="auto")  # the compiled kernel
    relative = (got - expected).norm() / expected.norm()
    assert relative < 1e-2, relative
