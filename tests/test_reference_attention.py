"""The PyTorch reference of pyramid attention against explicit constructions of DESIGN.md §1."""

import math

import pytest
import torch

from psa_train.kernels import pyramid_attention
from psa_train.kernels.reference import mean_pool


def _random_qkv(batch, heads, length_q, length_k, dim, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length_q, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, length_k, dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, length_k, dim, generator=gen, dtype=dtype)
    return q, k, v


def _random_levels(batch, heads, blocks_q, blocks_k, seed=0, values=(0, 1, 2, 4, 8)):
    gen = torch.Generator().manual_seed(seed)
    choice = torch.randint(len(values), (batch, heads, blocks_q, blocks_k), generator=gen)
    return torch.tensor(values, dtype=torch.int32)[choice]


def _explicit_pyramid_attention(q, k, v, levels, block_m, block_n, scale):
    """Row by row, block by block: the slow, obviously-correct construction of DESIGN.md §1."""
    batch, heads, length_q, dim = q.shape
    length_k = k.shape[-2]
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(levels.shape[2]):
                rows = slice(i * block_m, min(length_q, (i + 1) * block_m))
                keys, values, bias = [], [], []
                for j in range(levels.shape[3]):
                    level = int(levels[b, h, i, j])
                    if level == 0:
                        continue
                    start, end = j * block_n, min(length_k, (j + 1) * block_n)
                    for g in range(start, end, level):  # groups start at the block start
                        members = slice(g, min(end, g + level))
                        count = members.stop - members.start
                        keys.append(k[b, h, members].mean(0))
                        values.append(v[b, h, members].mean(0))
                        bias.append(math.log(count))
                if not keys:
                    continue  # empty row: zeros
                kk, vv = torch.stack(keys), torch.stack(values)
                logits = q[b, h, rows] @ kk.T * scale + torch.tensor(bias, dtype=q.dtype)
                out[b, h, rows] = torch.softmax(logits, dim=-1) @ vv
    return out


def test_all_level_one_equals_dense_attention():
    q, k, v = _random_qkv(2, 3, 200, 200, 32)
    levels = torch.ones(2, 3, 4, 4, dtype=torch.int32)
    out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    dense = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1) @ v
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "length_q,length_k,block_m,block_n",
    [(256, 256, 64, 32), (200, 181, 64, 64), (130, 300, 128, 128), (64, 37, 64, 32)],
)
def test_matches_explicit_construction_with_tails(length_q, length_k, block_m, block_n):
    q, k, v = _random_qkv(1, 2, length_q, length_k, 16, seed=length_k)
    levels = _random_levels(1, 2, -(-length_q // block_m), -(-length_k // block_n), seed=length_q)
    out = pyramid_attention(q, k, v, levels, block_m=block_m, block_n=block_n)
    expected = _explicit_pyramid_attention(q, k, v, levels, block_m, block_n, 1 / math.sqrt(16))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_pooled_key_equals_its_members_repeated():
    """A level-s block equals full attention on keys/values replaced by their group means."""
    q, k, v = _random_qkv(1, 1, 64, 128, 8, seed=3)
    for level in (2, 4, 8):
        levels = torch.full((1, 1, 1, 2), level, dtype=torch.int32)
        pooled_k, _ = mean_pool(k, level)
        pooled_v, _ = mean_pool(v, level)
        repeated_k = pooled_k.repeat_interleave(level, dim=-2)
        repeated_v = pooled_v.repeat_interleave(level, dim=-2)
        dense = torch.softmax(q @ repeated_k.transpose(-1, -2) / math.sqrt(8), dim=-1) @ repeated_v
        out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
        torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)


def test_partial_tail_group_gets_log_count_bias():
    """Key length 67 with block 64 at level 8: the tail block is one group of 3 tokens."""
    q, k, v = _random_qkv(1, 1, 64, 67, 8, seed=5)
    levels = torch.tensor([[[[0, 8]]]], dtype=torch.int32)
    out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    # A single pooled key: softmax over one entry, whatever the bias, gives its mean value.
    torch.testing.assert_close(out, v[:, :, 64:].mean(-2, keepdim=True).expand_as(out))
    levels = torch.tensor([[[[1, 8]]]], dtype=torch.int32)
    out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    keys = torch.cat([k[0, 0, :64], k[0, 0, 64:].mean(0, keepdim=True)])
    values = torch.cat([v[0, 0, :64], v[0, 0, 64:].mean(0, keepdim=True)])
    bias = torch.zeros(65, dtype=q.dtype)
    bias[-1] = math.log(3)
    expected = torch.softmax(q[0, 0] @ keys.T / math.sqrt(8) + bias, dim=-1) @ values
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_empty_rows_give_zeros_and_zero_gradients():
    q, k, v = _random_qkv(1, 2, 128, 128, 16, seed=7)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    levels = _random_levels(1, 2, 2, 2, seed=1, values=(1, 2, 4))
    levels[0, 0, 1] = 0  # the second query block of head 0 sees nothing
    out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[0, 0, 64:]) == 0
    out.sum().backward()
    for grad in (q.grad, k.grad, v.grad):
        assert torch.isfinite(grad).all()
    assert torch.count_nonzero(q.grad[0, 0, 64:]) == 0
    assert torch.count_nonzero(q.grad[0, 0, :64]) > 0


def test_gradcheck_on_tiny_shapes():
    q, k, v = _random_qkv(1, 1, 40, 70, 4, seed=11)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    levels = torch.tensor([[[[1, 4]]]], dtype=torch.int32)
    fn = lambda q, k, v: pyramid_attention(q, k, v, levels, block_m=64, block_n=64)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    levels = torch.tensor([[[[8, 0, 2]]]], dtype=torch.int32)
    q2, k2, v2 = (t.detach()[:, :, :, :].clone() for t in _random_qkv(1, 1, 40, 70, 4, seed=12))
    k2, v2 = (torch.cat([t, t[:, :, :10] * 0.5], dim=-2) for t in (k2, v2))  # Lk = 80, 3 blocks of 32
    q2, k2, v2 = (t.requires_grad_() for t in (q2, k2, v2))
    fn = lambda q, k, v: pyramid_attention(q, k, v, levels, block_m=64, block_n=32)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q2, k2, v2))


def test_half_precision_runs_in_float32_and_returns_input_dtype():
    q, k, v = _random_qkv(1, 2, 128, 128, 32, dtype=torch.float32, seed=2)
    levels = _random_levels(1, 2, 2, 4, seed=2, values=(1, 2, 8))
    exact = pyramid_attention(q.double(), k.double(), v.double(), levels, block_m=64, block_n=32)
    for dtype in (torch.float16, torch.bfloat16):
        out = pyramid_attention(q.to(dtype), k.to(dtype), v.to(dtype), levels, block_m=64, block_n=32)
        assert out.dtype == dtype
        error = (out.double() - exact).norm() / exact.norm()
        assert error < 1e-2


def test_chunked_long_sequence_matches_unchunked(monkeypatch):
    """Forcing tiny chunks must not change the result (chunk boundaries fall between blocks)."""
    import psa_train.kernels.reference as reference

    q, k, v = _random_qkv(1, 2, 300, 300, 16, seed=9)
    levels = _random_levels(1, 2, 5, 5, seed=9)
    whole = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 1)
    chunked = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_validation_errors_name_the_argument():
    q, k, v = _random_qkv(1, 2, 128, 128, 16)
    levels = torch.ones(1, 2, 2, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="levels must have shape"):
        pyramid_attention(q, k, v, levels[:, :, :1], block_m=64, block_n=64)
    with pytest.raises(ValueError, match="levels may only hold"):
        pyramid_attention(q, k, v, levels * 3, block_m=64, block_n=64)
    with pytest.raises(ValueError, match="integer tensor"):
        pyramid_attention(q, k, v, levels.float(), block_m=64, block_n=64)
    with pytest.raises(ValueError, match="block_m must be one of"):
        pyramid_attention(q, k, v, levels, block_m=32, block_n=64)
    with pytest.raises(ValueError, match="block_n must be one of"):
        pyramid_attention(q, k, v, levels, block_m=64, block_n=16)
    with pytest.raises(ValueError, match="backend must be one of"):
        pyramid_attention(q, k, v, levels, block_m=64, block_n=64, backend="cuda")
    with pytest.raises(ValueError, match="one dtype"):
        pyramid_attention(q, k.float(), v, levels, block_m=64, block_n=64)
    with pytest.raises(ValueError, match=r"shape \[B, H, L, D\]"):
        pyramid_attention(q[0], k, v, levels, block_m=64, block_n=64)
    with pytest.raises(ValueError, match="head dims"):
        pyramid_attention(q.float(), k.float(), v.float(), levels, block_m=64, block_n=64, backend="triton")
    with pytest.raises(ValueError, match="takes dtypes"):
        pyramid_attention(q, k, v, levels, block_m=64, block_n=64, backend="triton")


def test_accepts_non_contiguous_inputs():
    q, k, v = _random_qkv(1, 64, 2, 2, 16)  # [B, L, H, D] laid out, viewed as [B, H, L, D]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    levels = torch.ones(1, 2, 1, 1, dtype=torch.int32)
    out = pyramid_attention(q, k, v, levels, block_m=64, block_n=64)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
