"""Block scores: sampling, a dominant key block, max vs mean, tails, chunking."""

import math

import pytest
import torch

from psa_train.attention import block_scores, sample_positions, scoring
from psa_train.attention.scoring import padded_samples


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("length, block, fraction", [(256, 64, 0.25), (200, 64, 0.25), (70, 32, 0.1), (5, 64, 0.25), (130, 128, 1.0)])
def test_sample_positions(length, block, fraction):
    idx, blk = sample_positions(length, block, fraction)
    nblocks = -(-length // block)
    assert torch.equal(blk, idx // block)  # block id is the token's block
    assert torch.equal(torch.unique(blk), torch.arange(nblocks))  # every block sampled, incl. the tail
    assert (idx < length).all() and torch.equal(idx, torch.unique(idx))  # in range, sorted, distinct
    for j in range(nblocks):
        n = min(block, length - j * block)
        assert (blk == j).sum() == max(1, int(fraction * n + 0.5))
    idx2, _ = sample_positions(length, block, fraction)
    assert torch.equal(idx, idx2)  # deterministic


def _brute_scores(q, k, block_m, block_n, reduction):
    """sample_fraction=1: softmax over all keys, summed per key block, reduced per query block."""
    _, _, Lq, D = q.shape
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1)
    nk, nq = -(-k.shape[2] // block_n), -(-Lq // block_m)
    per_block = torch.stack([p[..., j * block_n : (j + 1) * block_n].sum(-1) for j in range(nk)], -1)
    rows = []
    for i in range(nq):
        seg = per_block[:, :, i * block_m : (i + 1) * block_m]
        rows.append(seg.amax(2) if reduction == "max" else seg.mean(2))
    s = torch.stack(rows, 2)
    return s / s.sum(-1, keepdim=True)


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_full_sampling_matches_definition_with_tails(reduction):
    q = torch.randn(2, 3, 64 * 2 + 17, 16, generator=_gen(1), dtype=torch.float64)
    k = torch.randn(2, 3, 32 * 3 + 5, 16, generator=_gen(2), dtype=torch.float64)
    got = block_scores(q, k, 64, 32, 1.0, reduction)
    assert got.shape == (2, 3, 3, 4) and got.dtype == torch.float64
    torch.testing.assert_close(got, _brute_scores(q, k, 64, 32, reduction), rtol=1e-12, atol=1e-12)


def test_max_and_mean_differ_as_designed():
    # One query stares at key block 1; all others mildly prefer key block 2.
    D = 64
    e = torch.eye(D, dtype=torch.float64)
    k = torch.cat([e[j].expand(32, D) * 8 for j in range(3)]).view(1, 1, 96, D)
    q = e[2].expand(64, D).clone()
    q[0] = 10 * e[1]
    q = q.view(1, 1, 64, D)
    s_max = block_scores(q, k, 64, 32, 1.0, "max")
    s_mean = block_scores(q, k, 64, 32, 1.0, "mean")
    assert s_max[0, 0, 0].argmax() == 1
    assert s_mean[0, 0, 0].argmax() == 2


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_dominant_key_block_wins(reduction):
    B, H, L, D = 1, 2, 64 * 6 + 10, 32
    u = torch.randn(D, generator=_gen(3), dtype=torch.float64)
    u = u / u.norm()
    q = torch.randn(B, H, L, D, generator=_gen(4), dtype=torch.float64) * 0.3 + 2 * u
    k = torch.randn(B, H, L, D, generator=_gen(5), dtype=torch.float64) * 0.3
    k[:, :, 3 * 64 : 4 * 64] += 6 * u  # key block 3 is aligned with every query
    s = block_scores(q, k, 128, 64, 0.25, reduction)
    assert s.shape == (B, H, 4, 7)
    assert (s.argmax(-1) == 3).all()
    assert (s[..., 3] > 0.5).all()


def test_rows_normalised_finite_and_chunking_invariant():
    q = torch.randn(1, 2, 1000, 64, generator=_gen(6))
    k = torch.randn(1, 2, 777, 64, generator=_gen(7))
    s = block_scores(q, k)
    assert s.shape == (1, 2, 8, 13) and s.dtype == torch.float32
    assert torch.isfinite(s).all() and (s >= 0).all()
    torch.testing.assert_close(s.sum(-1), torch.ones(1, 2, 8))
    tiny_chunks = block_scores(q, k, chunk_elements=1)  # one query block per chunk
    torch.testing.assert_close(s, tiny_chunks, rtol=1e-5, atol=1e-7)
    raw = block_scores(q, k, normalize=False)
    assert (raw <= 1 + 1e-5).all() and not torch.allclose(raw.sum(-1), torch.ones(1, 2, 8))


def test_no_grad_and_bad_arguments():
    q = torch.randn(1, 1, 64, 16, requires_grad=True)
    assert not block_scores(q, q, 64, 32).requires_grad
    with pytest.raises(ValueError, match="reduction"):
        block_scores(q, q, 64, 32, reduction="sum")
    with pytest.raises(ValueError, match="sample_fraction"):
        block_scores(q, q, 64, 32, sample_fraction=0)
    with pytest.raises(ValueError, match="q and k"):
        block_scores(q, q[..., :8], 64, 32)


def test_sample_tables_are_cached_per_device():
    rows, valid = padded_samples(1000, 64, 0.25, "cpu")
    again = padded_samples(1000, 64, 0.25, torch.device("cpu"))
    assert again[0] is rows and again[1] is valid
    tables = scoring._sample_tables(1000, 64, 0.25, "cpu")
    assert tables.valid is valid
    assert torch.equal(tables.counts.squeeze(-1), valid.sum(-1).float())
