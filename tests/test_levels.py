"""Level assignment: budget, quota and threshold bands, top block, similarity cap, prefix, stats."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psa_train.attention import (
    PSAConfig,
    apply_similarity_cap,
    assign_levels,
    compute_density,
    key_similarity,
    level_histogram,
    quota_counts,
)
from psa_train.attention.levels import density_from_counts, level_counts

FINE_TO_COARSE = {1: 0, 2: 1, 4: 2, 8: 3, 0: 4}  # band order: 1, 2, 4, 8, skipped
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def quota_configs(draw):
    raw = [draw(st.floats(0.0, 1.0)) for _ in range(4)]
    total = draw(st.floats(0.05, 1.0))
    fractions = [r / max(sum(raw), 1e-9) * total for r in raw]
    return PSAConfig(band_mode="quota", bands=dict(zip((1, 2, 4, 8), fractions)))


@st.composite
def threshold_configs(draw):
    bounds = sorted(draw(st.floats(0.01, 1.0)) for _ in range(4))
    return PSAConfig(band_mode="threshold", bands=dict(zip((1, 2, 4, 8), bounds)))


configs = st.one_of(quota_configs(), threshold_configs())


@st.composite
def score_maps(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 40)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # Heavy-tailed positive scores, distinct almost surely.
    return torch.rand(shape, generator=g, dtype=torch.float64) ** draw(st.sampled_from([1.0, 4.0, 16.0]))


def _band_rank(levels):
    out = torch.empty_like(levels, dtype=torch.long)
    for lvl, r in FINE_TO_COARSE.items():
        out[levels == lvl] = r
    return out


@SETTINGS
@given(score_maps(), configs)
def test_budget_zero_is_all_level_one(scores, config):
    levels = assign_levels(scores, config, budget=0.0)
    assert levels.shape == scores.shape
    assert (levels == 1).all()
    assert compute_density(levels) == 1.0


@SETTINGS
@given(score_maps(), configs, st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6))
def test_levels_get_coarser_as_budget_grows(scores, config, budgets):
    budgets = sorted(budgets)
    prev_rank, prev_density = None, None
    for b in budgets:
        levels = assign_levels(scores, config, budget=b)
        rank, density = _band_rank(levels), compute_density(levels)
        if prev_rank is not None:
            assert (rank >= prev_rank).all()  # every block only moves toward coarser/skipped
            assert density <= prev_density + 1e-12
        prev_rank, prev_density = rank, density


@SETTINGS
@given(score_maps(), configs, st.floats(0.0, 1.0))
def test_top_block_is_level_one_and_order_follows_scores(scores, config, budget):
    levels = assign_levels(scores, config, budget=budget)
    top = scores.argmax(-1, keepdim=True)
    assert (levels.gather(-1, top) == 1).all()
    # A higher score never gets a coarser band than a lower score in the same row.
    rank = _band_rank(levels)
    higher = scores.unsqueeze(-1) > scores.unsqueeze(-2)  # [.., i, j]: score_i > score_j
    assert not (higher & (rank.unsqueeze(-1) > rank.unsqueeze(-2))).any()


@SETTINGS
@given(score_maps(), quota_configs(), st.floats(0.0, 1.0))
def test_quota_cumulative_counts(scores, config, budget):
    levels = assign_levels(scores, config, budget=budget)
    nk = scores.shape[-1]
    bounds = config.boundaries(budget)
    expected = quota_counts(nk, config, budget)
    cum = torch.zeros(scores.shape[:-1], dtype=torch.long)
    for i, s in enumerate((1, 2, 4, 8)):
        cum += (levels == s).sum(-1)
        assert (cum == expected[i]).all()
        target = bounds[s] * nk
        assert abs(expected[i] - target) <= 1.0, (s, expected[i], target)


@SETTINGS
@given(score_maps(), threshold_configs(), st.floats(0.0, 1.0))
def test_threshold_bands(scores, config, budget):
    levels = assign_levels(scores, config, budget=budget)
    mass = scores / scores.sum(-1, keepdim=True)
    # Mass of the strictly higher-scored blocks of the row, computed independently of the sort.
    before = (mass.unsqueeze(-2) * (scores.unsqueeze(-2) > scores.unsqueeze(-1))).sum(-1)
    bounds = config.boundaries(budget)
    for idx in torch.nonzero(torch.ones_like(levels)).tolist():
        m, lvl = before[tuple(idx)].item(), levels[tuple(idx)].item()
        if any(abs(m - b) < 1e-9 for b in bounds.values()) or m == 0.0:
            continue  # on a boundary (float noise), or the top block
        want = next((s for s in (1, 2, 4, 8) if m < bounds[s] or bounds[s] >= 1.0), 0)
        assert lvl == want, (idx, m, bounds)


def test_threshold_blocks_with_no_mass_at_full_boundary():
    # Zero-score blocks sit at mass 1.0 exactly; a boundary of 1.0 must still take them.
    scores = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    cfg = PSAConfig(band_mode="threshold", bands={1: 0.5, 2: 0.5, 4: 0.5, 8: 1.0})
    assert assign_levels(scores, cfg).tolist() == [[[[1, 8, 8, 8]]]]
    cfg = PSAConfig(band_mode="threshold", bands={1: 0.5, 2: 0.5, 4: 0.5, 8: 0.9})
    assert assign_levels(scores, cfg).tolist() == [[[[1, 0, 0, 0]]]]
    assert assign_levels(scores, cfg, budget=1e-12).tolist() == [[[[1, 1, 1, 1]]]]


def test_threshold_mass_on_a_boundary_is_exact():
    # Masses before the blocks 6, 4, 2 are 0, 6/12, 10/12: the cumulative sum runs on the raw
    # scores, so 6/12 is exactly 0.5, not in the level-1 band (summing 1/2 + 1/3 - 1/3 would
    # give 0.49999999999999994). Both backends agree.
    scores = torch.tensor([[[[2.0, 6.0, 4.0]]]])
    cfg = PSAConfig(band_mode="threshold", bands={1: 0.5, 2: 0.75, 4: 0.75, 8: 0.75})
    for backend in ("torch", "triton"):
        assert assign_levels(scores, cfg, backend=backend).tolist() == [[[[0, 1, 2]]]]


@SETTINGS
@given(score_maps(), configs, st.integers(0, 2**31), st.lists(st.one_of(st.none(), st.floats(-1, 1)), min_size=3, max_size=3))
def test_similarity_cap(scores, config, seed, thresholds):
    config = config.replace(similarity_thresholds=dict(zip((2, 4, 8), thresholds)))
    B, H, _, nk = scores.shape
    sim = torch.rand(B, H, nk, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    free = assign_levels(scores, config)
    capped = assign_levels(scores, config, key_similarity=sim)
    allowed = {1: torch.ones(B, H, 1, nk, dtype=torch.bool)}
    for i, s in enumerate((2, 4, 8)):
        thr = thresholds[i]
        allowed[s] = torch.ones(B, H, 1, nk, dtype=torch.bool) if thr is None else (sim[..., i] >= thr).unsqueeze(2)
    # Expected: walk each pooled block down from its uncapped level until allowed (8->4->2->1).
    plain = free.clone()
    for s in (8, 4, 2):
        demote = (plain == s) & ~allowed[s]
        plain[demote] = s // 2
    assert torch.equal(capped, plain)
    for s in (2, 4, 8):
        assert allowed[s].expand_as(capped)[capped == s].all()
    assert (_band_rank(capped) <= _band_rank(free)).all()
    assert ((capped == 0) == (free == 0)).all()


def test_similarity_cap_cascades():
    levels = torch.full((1, 1, 1, 3), 8, dtype=torch.int32)
    sim = torch.tensor([[[[0.9, 0.9, 0.9], [0.9, 0.9, 0.1], [0.9, 0.1, 0.1]]]])  # [B, H, nK, 3]
    cfg = PSAConfig(similarity_thresholds={2: 0.5, 4: 0.5, 8: 0.5})
    assert apply_similarity_cap(levels, sim, cfg).tolist() == [[[[8, 4, 2]]]]
    with pytest.raises(ValueError, match="key_similarity"):
        apply_similarity_cap(levels, sim[..., :2], cfg)


@SETTINGS
@given(score_maps(), configs, st.integers(1, 300))
def test_prefix_blocks_are_level_one_both_ways(scores, config, prefix):
    config = config.replace(block_m=64, block_n=32)
    levels = assign_levels(scores, config, prefix_tokens=prefix)
    pq, pk = -(-prefix // 64), -(-prefix // 32)
    assert (levels[:, :, :pq, :] == 1).all()
    assert (levels[..., :pk] == 1).all()
    rest = assign_levels(scores, config)[:, :, pq:, pk:]
    assert torch.equal(levels[:, :, pq:, pk:], rest)  # other blocks untouched
    # The config's prefix_tokens is the default.
    assert torch.equal(assign_levels(scores, config.replace(prefix_tokens=prefix)), levels)


def _brute_similarity(k, block_n, strides=(2, 4, 8)):
    B, H, L, D = k.shape
    nk = -(-L // block_n)
    out = torch.zeros(B, H, nk, len(strides), dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for j in range(nk):
                blk = k[b, h, j * block_n : min(L, (j + 1) * block_n)]
                for i, s in enumerate(strides):
                    cos = []
                    for g0 in range(0, blk.shape[0], s):
                        grp = blk[g0 : g0 + s]
                        mean = grp.mean(0)
                        for t in grp:
                            cos.append(torch.dot(t, mean) / (t.norm() * mean.norm()))
                    out[b, h, j, i] = torch.stack(cos).mean()
    return out


def test_key_similarity_matches_definition_with_tail():
    k = torch.randn(1, 2, 32 * 2 + 13, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = key_similarity(k, 32)
    assert got.shape == (1, 2, 3, 3)
    torch.testing.assert_close(got, _brute_similarity(k, 32), rtol=1e-10, atol=1e-10)


def test_key_similarity_extremes():
    u = torch.randn(8, dtype=torch.float64)
    same = u.expand(1, 1, 32, 8)
    torch.testing.assert_close(key_similarity(same, 32), torch.ones(1, 1, 1, 3, dtype=torch.float64))
    alternating = torch.stack([u, -u] * 16).view(1, 1, 32, 8)  # stride-2 groups average to zero
    assert key_similarity(alternating, 32)[0, 0, 0].abs().max() < 1e-6


def test_density_and_histogram():
    levels = torch.tensor([[[[1, 2, 4, 8], [0, 0, 1, 8]]], [[[1, 1, 1, 1], [0, 0, 0, 0]]]])  # [2, 1, 2, 4]
    d = (1 + 0.5 + 0.25 + 0.125 + 1 + 0.125 + 4) / 16
    assert compute_density(levels) == pytest.approx(d)
    per_head = compute_density(levels.expand(2, 3, 2, 4), per_head=True)
    assert per_head.shape == (3,) and torch.allclose(per_head, torch.full((3,), d, dtype=torch.float64))
    hist = level_histogram(levels)
    assert hist == pytest.approx({0: 6 / 16, 1: 6 / 16, 2: 1 / 16, 4: 1 / 16, 8: 2 / 16})
    assert sum(hist.values()) == pytest.approx(1.0)
    counts = level_counts(levels)
    assert density_from_counts(counts).item() == pytest.approx(d)
    two = torch.stack([counts, level_counts(levels[1:])])  # a batch of histograms: one density each
    torch.testing.assert_close(density_from_counts(two), torch.tensor([d, compute_density(levels[1:])]))
    assert density_from_counts(torch.zeros(5, dtype=torch.long)).item() == 0.0  # no blocks: 0, not NaN
