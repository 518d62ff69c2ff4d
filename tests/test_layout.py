"""Token layouts: bijections, inverses, prefix handling and 3-D compactness of blocks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psa_train.attention import TokenLayout, gilbert_order, layout_permutation, tile_order
from psa_train.attention.layout import permute_tokens

grids = st.tuples(st.integers(1, 7), st.integers(1, 19), st.integers(1, 23))
tiles = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))


def _coords(perm, grid):
    T, H, W = grid
    return torch.stack([perm // (H * W), (perm // W) % H, perm % W], 1)


def _is_permutation(perm, n):
    return perm.dtype == torch.long and torch.equal(torch.sort(perm).values, torch.arange(n))


@settings(max_examples=60, deadline=None)
@given(grids, tiles)
def test_orders_are_bijections(grid, tile):
    n = grid[0] * grid[1] * grid[2]
    assert _is_permutation(tile_order(grid, tile), n)
    assert _is_permutation(gilbert_order(grid), n)


@settings(max_examples=40, deadline=None)
@given(grids, st.sampled_from(["none", "tile", "gilbert"]), st.integers(0, 5))
def test_layout_round_trip_keeps_prefix_in_front(grid, mode, prefix):
    n = prefix + grid[0] * grid[1] * grid[2]
    perm, inv = layout_permutation(grid, mode, (2, 4, 4), prefix)
    assert _is_permutation(perm, n) and _is_permutation(inv, n)
    assert torch.equal(perm[:prefix], torch.arange(prefix))
    x = torch.randn(1, 2, n, 3)
    y = x[:, :, perm]
    assert torch.equal(y[:, :, inv], x)
    layout = TokenLayout(grid, mode, (2, 4, 4), prefix)
    assert torch.equal(layout.undo(layout.apply(x)), x)
    assert torch.equal(layout.apply(x), y)


def test_permute_tokens_matches_indexing_forward_and_backward():
    perm, inv = layout_permutation((3, 4, 5), "gilbert", (2, 8, 8), 2)
    x = torch.randn(2, 3, perm.numel(), 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, perm.numel(), 4, dtype=torch.float64)
    expected = x[:, :, perm]
    (grad_expected,) = torch.autograd.grad((expected * weight).sum(), x)
    got = permute_tokens(x, perm, inv)
    (grad_got,) = torch.autograd.grad((got * weight).sum(), x)
    assert torch.equal(got, expected) and torch.equal(grad_got, grad_expected)
    assert torch.equal(permute_tokens(got.detach(), inv, perm), x.detach())


def test_permutations_are_cached():
    a = layout_permutation((3, 5, 7), "gilbert", (2, 8, 8), 1)
    b = layout_permutation((3, 5, 7), "gilbert", (2, 8, 8), 1)
    assert a[0] is b[0] and a[1] is b[1]


def test_tile_order_small_example():
    # 1 x 2 x 4 grid, tiles 1 x 2 x 2 (raster inside a tile, tiles in raster order).
    assert tile_order((1, 2, 4), (1, 2, 2)).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    # Non-divisible: 1 x 3 x 3 with 1 x 2 x 2 tiles gives smaller edge tiles.
    assert tile_order((1, 3, 3), (1, 2, 2)).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]


def _compact(perm, grid, chunk=64, max_extent=16, max_mean_volume=2.5):
    """Every run of `chunk` consecutive tokens spans at most `max_extent` along each axis, and
    their bounding boxes average at most `max_mean_volume` x chunk cells."""
    c = _coords(perm, grid)
    m = (c.shape[0] // chunk) * chunk
    c = c[:m].view(-1, chunk, 3)
    extent = c.max(1).values - c.min(1).values + 1
    volume = extent.prod(1).double()
    return bool(extent.max() <= max_extent) and bool(volume.mean() <= max_mean_volume * chunk)


def test_tile_order_blocks_are_tiles():
    grid = (4, 32, 64)
    perm = tile_order(grid, (2, 8, 8))
    c = _coords(perm, grid).view(-1, 64, 3)
    extent = c.max(1).values - c.min(1).values + 1
    assert (extent.prod(1) == 64).all()  # each 64-token block is exactly a 1 x 8 x 8 half tile
    assert _compact(perm, grid)
    assert not _compact(torch.arange(4 * 32 * 64), grid)  # raster order fails the same check


@pytest.mark.parametrize("grid", [(21, 30, 52), (5, 17, 23), (13, 9, 100), (1, 45, 80), (8, 32, 64)])
def test_gilbert_is_continuous_and_compact(grid):
    perm = gilbert_order(grid)
    c = _coords(perm, grid)
    step = (c[1:] - c[:-1]).abs().sum(1)
    assert (step == 1).double().mean() >= 0.95
    assert step.max() <= 2  # the rare parity fix is a diagonal step, never a jump
    assert _compact(perm, grid)
    assert not _compact(torch.arange(perm.numel()), grid)


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(1, 12), st.integers(4, 40), st.integers(4, 40)))
def test_gilbert_mostly_unit_steps(grid):
    """Any grid: face-neighbour steps but for a few diagonal parity fixes. Small grids need
    relatively more of them (3x7x4: 5 of 83 steps, 1x4x5: 1 of 19), hence a looser share than
    the realistic grids above."""
    c = _coords(gilbert_order(grid), grid)
    step = (c[1:] - c[:-1]).abs().sum(1)
    assert (step == 1).double().mean() >= 0.9
    assert step.max() <= 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="grid"):
        tile_order((2, 0, 3))
    with pytest.raises(ValueError, match="tile"):
        tile_order((2, 2, 3), (1, 2))
    with pytest.raises(ValueError, match="mode"):
        layout_permutation((2, 2, 2), "zorder")
    with pytest.raises(ValueError, match="prefix"):
        layout_permutation((2, 2, 2), "tile", prefix=-1)
