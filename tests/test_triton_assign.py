"""The Triton level assignment (kernels/triton_assign.py) against the torch path, bit for bit.

CPU tensors run the kernel in the Triton interpreter, so shapes stay small. Rows mix the cases
that break naive ranks: ties (equal scores must keep index order), all-zero and all-equal
rows, one dominant block, heavy tails, and masses that land exactly on band boundaries.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from psa_train.kernels import triton_assign
from psa_train.kernels.triton_assign import assign_levels_from_budget, assign_levels_triton

from psa_train.attention import PSAConfig, assign_levels
from psa_train.attention.config import BOUNDARY_ONE
from psa_train.attention.levels import quota_counts

CONFIGS = {
    "default_quota": PSAConfig.default_quota(),
    "wan21_1_3b": PSAConfig.wan21_1_3b(),
    "quota_full": PSAConfig(band_mode="quota", bands={1: 0.3, 2: 0.2, 4: 0.25, 8: 0.25}),
    "threshold_dyadic": PSAConfig(band_mode="threshold", bands={1: 0.25, 2: 0.5, 4: 0.75, 8: 1.0}),
    "threshold_gaps": PSAConfig(band_mode="threshold", bands={1: 0.5, 8: 0.9}),
}
BUDGETS = (0.0, 0.3, 1.0, None)  # None: the config's own budget
ROW_KINDS = 8


def _mixed_scores(nk: int, seed: int, heads: int = 2) -> torch.Tensor:
    """[1, heads, 8, nk] float32, one row of each kind per head."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(heads):
        rand = torch.rand(nk, generator=g)
        dominant = torch.rand(nk, generator=g) * 1e-6
        dominant[torch.randint(nk, (1,), generator=g)] = 1.0
        rows += [
            rand,
            rand**8,  # heavy tail
            torch.tensor([0.0, 0.25, 0.5, 1.0])[torch.randint(4, (nk,), generator=g)],  # dyadic ties
            torch.zeros(nk),
            torch.full((nk,), 1 / 3),  # ties whose masses k/nk sit on boundaries for some nk
            dominant,
            torch.softmax(torch.randn(nk, generator=g) * 3, 0),  # what block scoring produces
            torch.tensor([0.1, 0.2, 0.3])[torch.randint(3, (nk,), generator=g)],  # non-dyadic ties
        ]
    return torch.stack(rows).view(1, heads, ROW_KINDS, nk)


def _assert_same(scores, config, **kw):
    got = assign_levels(scores, config, backend="triton", **kw)
    want = assign_levels(scores, config, backend="torch", **kw)
    assert got.dtype == torch.int32 and got.shape == scores.shape
    assert torch.equal(got, want), (got - want).nonzero()[:8].tolist()


@pytest.mark.parametrize("nk", [1, 2, 3, 16, 37, 100])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_torch(name, nk):
    scores = _mixed_scores(nk, seed=nk)
    for budget in BUDGETS:
        _assert_same(scores, CONFIGS[name], budget=budget)


@pytest.mark.parametrize("name", ["wan21_1_3b", "default_quota"])
def test_long_rows(name):
    # 513 blocks: padded to 1024 lanes, one row per program.
    _assert_same(_mixed_scores(513, seed=5, heads=1)[:, :, :4], CONFIGS[name])


def test_ties_follow_index_order():
    # All equal: ranks are the indices, so quota levels read left to right.
    scores = torch.zeros(1, 1, 1, 10)
    counts = [2, 4, 4, 7]  # levels 1, 1, 2, 2, 8, 8, 8, 0, 0, 0
    got = assign_levels_triton(scores, counts=counts)
    assert got.flatten().tolist() == [1, 1, 2, 2, 8, 8, 8, 0, 0, 0]
    assert quota_counts(10, CONFIGS["default_quota"]) == [1, 2, 2, 4]


def test_boundary_exactly_on_mass():
    # Masses before the blocks are 0, 1/4, 1/2, 3/4: a boundary equal to the mass excludes it.
    scores = torch.ones(1, 1, 1, 4)
    config = CONFIGS["threshold_dyadic"]
    assert assign_levels(scores, config, backend="triton").flatten().tolist() == [1, 2, 4, 8]
    _assert_same(scores, config)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("name", ["wan21_1_3b", "default_quota", "threshold_gaps"])
def test_nan_inf_and_signed_zero(name):
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([
        [0.5, nan, 0.25, nan, 0.0, -0.0, 0.25, 0.1],
        [inf, 0.5, inf, 0.0, 0.2, 0.2, 0.1, 0.0],
        [-inf, 0.5, -0.0, 0.0, -0.0, 0.3, -inf, 0.2],
        [-0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0],
    ]).view(1, 1, 4, 8)
    for budget in BUDGETS:
        _assert_same(scores, CONFIGS[name], budget=budget)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores(dtype):
    scores = _mixed_scores(37, seed=1).to(dtype)  # rounding adds more ties
    for name in ("wan21_1_3b", "default_quota"):
        _assert_same(scores, CONFIGS[name], budget=0.3)
        _assert_same(scores, CONFIGS[name])


def test_strided_scores_and_post_processing():
    base = _mixed_scores(24, seed=2)  # [1, 2, 8, 24]
    scores = base.transpose(2, 3)  # [1, 2, 24, 8], not contiguous
    config = PSAConfig.wan21_1_3b(similarity_thresholds={2: 0.5, 4: 0.5, 8: 0.5}, block_m=64, block_n=32)
    sim = torch.rand(1, 2, 8, 3, generator=torch.Generator().manual_seed(0))
    _assert_same(scores, config, key_similarity=sim, prefix_tokens=40)
    _assert_same(scores[:, :, ::2], CONFIGS["quota_full"])


@pytest.mark.parametrize("rows, num_warps", [(1, 1), (2, 4), (8, 2)])
def test_launch_options_do_not_change_levels(rows, num_warps):
    scores = _mixed_scores(20, seed=3)
    counts = quota_counts(20, CONFIGS["default_quota"])
    bounds = [0.6, 0.7, 0.7, float("inf")]
    for kw in ({"counts": counts}, {"bounds": bounds}):
        want = assign_levels_triton(scores, **kw)
        assert torch.equal(assign_levels_triton(scores, rows=rows, num_warps=num_warps, **kw), want)


def test_backend_choice_and_errors(monkeypatch):
    scores = _mixed_scores(5, seed=4)
    config = CONFIGS["default_quota"]
    with pytest.raises(ValueError, match="backend"):
        assign_levels(scores, config, backend="cuda")
    with pytest.raises(ValueError, match="Triton level assignment"):
        assign_levels(scores.double(), config, backend="triton")
    with pytest.raises(ValueError, match="exactly one"):
        assign_levels_triton(scores)
    with pytest.raises(ValueError, match="power of two"):
        assign_levels_triton(scores, counts=[1, 1, 1, 1], rows=3)

    def refuse(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(triton_assign, "assign_levels_triton", refuse)
    assign_levels(scores, config)  # CPU tensors: "auto" is torch
    assign_levels(scores.double(), config)


@st.composite
def band_configs(draw):
    fractions = [draw(st.floats(0.0, 0.25)) for _ in range(4)]
    if draw(st.booleans()):
        return PSAConfig(band_mode="quota", bands=dict(zip((1, 2, 4, 8), fractions)))
    bounds = sorted(draw(st.sampled_from([0.125, 0.25, 0.5, 0.75, 1.0, 0.3, 0.6, 0.9])) for _ in range(4))
    return PSAConfig(band_mode="threshold", bands=dict(zip((1, 2, 4, 8), bounds)))


@settings(max_examples=15, deadline=None)
@given(band_configs(), st.integers(1, 70), st.floats(0.0, 1.0), st.integers(0, 2**31),
       st.sampled_from([1, 2, 5, 100]))
def test_random_configs(config, nk, budget, seed, distinct):
    # Scores drawn from `distinct` values per row: few values, many ties.
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(distinct, generator=g)
    scores = values[torch.randint(distinct, (1, 2, 3, nk), generator=g)]
    _assert_same(scores, config, budget=budget)


def _from_budget(scores, config, budget):
    """Levels with the band edges derived in the kernel from a budget in memory (the compiled path)."""
    bits = torch.tensor(budget, dtype=torch.float64).view(torch.int64).to(scores.device)
    return assign_levels_from_budget(scores, bits, list(config.target_boundaries().values()),
                                     config.band_mode == "threshold", BOUNDARY_ONE)


# Budgets whose boundary * blocks lands on a half (0.5 * 0.3 * 10 = 1.5, 0.5 * 0.35 * 20 = 3.5 ...):
# one rounding more or less in the edge arithmetic moves a count there.
EDGE_BUDGETS = (0.0, 0.5, 1 / 3, 0.1, 0.7, 0.9999999995, 1.0)


@pytest.mark.parametrize("nk", [1, 10, 20, 37])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_edges_from_a_budget_in_memory(name, nk):
    scores = _mixed_scores(nk, seed=nk)
    for budget in EDGE_BUDGETS:
        want = assign_levels(scores, CONFIGS[name], budget=budget, backend="torch")
        assert torch.equal(_from_budget(scores, CONFIGS[name], budget), want), budget


def test_budget_in_memory_is_checked():
    scores = _mixed_scores(4, seed=0)
    targets = list(PSAConfig().target_boundaries().values())
    with pytest.raises(ValueError, match="budget_bits"):
        assign_levels_from_budget(scores, torch.tensor(0.5), targets, False, BOUNDARY_ONE)
    with pytest.raises(ValueError, match="targets"):
        assign_levels_from_budget(scores, torch.tensor(0), targets[:3], False, BOUNDARY_ONE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_edges_from_budget_are_the_host_edges_on_gpu():
    """Compiled, the edge arithmetic must not fuse a multiply and an add (one rounding fewer than
    Python's): the counts and bounds must be the host's bit for bit at every budget."""
    gen = torch.Generator().manual_seed(5)
    budgets = list(EDGE_BUDGETS) + torch.rand(60, generator=gen, dtype=torch.float64).tolist()
    for name, config in CONFIGS.items():
        for nk in (10, 20, 37, 512, 1024):
            scores = _mixed_scores(nk, seed=nk).cuda()
            for budget in budgets:
                want = assign_levels(scores, config, budget=budget, backend="triton")
                assert torch.equal(_from_budget(scores, config, budget), want), (name, nk, budget)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["default_quota", "wan21_1_3b"])
def test_compiled_kernel_matches_torch_on_gpu(preset):
    config = getattr(PSAConfig, preset)()
    gen = torch.Generator(device="cuda").manual_seed(3)
    scores = torch.softmax(4 * torch.randn(1, 12, 256, 512, device="cuda", generator=gen), dim=-1)
    for budget in (0.3, 1.0):
        got = assign_levels(scores, config, budget=budget)  # auto: the compiled kernel
        assert torch.equal(got, assign_levels(scores, config, budget=budget, backend="torch"))
