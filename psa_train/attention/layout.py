"""Token layouts: reorder a T x H x W video grid so that 1-D blocks are compact 3-D regions.

Block-sparse attention decides per block; a block of 64 raster-order tokens is a thin strip of
one frame row, whose keys are not alike and whose score says little. Tiles or a space-filling
curve make every block a small box, so pooled keys are near-duplicates and scores are sharp.
Permutations depend only on the grid, so they are computed once (lru_cache) per shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

Grid = tuple[int, int, int]

LAYOUT_MODES = ("none", "tile", "gilbert")


def _check_grid(grid, name: str = "grid") -> Grid:
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 3
        or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid)
    ):
        raise ValueError(f"{name} must be three positive ints (T, H, W), got {grid!r}")
    return tuple(int(g) for g in grid)


def tile_order(grid: Grid, tile: Grid = (2, 8, 8)) -> torch.Tensor:
    """Raster indices of the grid's tokens visited tile by tile.

    Tiles are visited in raster (t, h, w) order and tokens inside a tile in raster order; where
    the grid is not divisible by the tile the edge tiles are smaller. Returns a LongTensor `perm`
    of length T*H*W with `new[i] = old[perm[i]]`.
    """
    T, H, W = _check_grid(grid)
    tt, th, tw = _check_grid(tile, "tile")
    t = torch.arange(T).view(T, 1, 1)
    h = torch.arange(H).view(1, H, 1)
    w = torch.arange(W).view(1, 1, W)
    n_th, n_tw = -(-H // th), -(-W // tw)
    tile_id = ((t // tt) * n_th + h // th) * n_tw + w // tw
    raster = (t * H + h) * W + w
    key = tile_id * (T * H * W) + raster  # tile first, raster order inside a tile
    return torch.argsort(key.reshape(-1))


# -- Gilbert (generalized Hilbert) curve ---------------------------------------------------
# A box is given by a corner `o` and three axis-aligned integer vectors a, b, c (each along a
# different axis, any sign). The curve fills the box starting at `o` and, whenever parity
# allows, ends at `o + a - unit(a)`: the far corner along the *major* vector a. Boxes are split
# recursively (halves kept even so sub-curves can end where the next one starts) until they are
# lines. This is the idea of the generalized Hilbert curve ("gilbert") for arbitrary sizes.


def _sgn(x: int) -> int:
    return (x > 0) - (x < 0)


def _unit(v):
    return tuple(_sgn(x) for x in v)


def _length(v) -> int:
    return abs(sum(v))  # exactly one non-zero component


def _half(v):
    """About half of v, rounded so that the half is even when |v| > 2 (keeps end corners exact)."""
    n = _length(v)
    h = n // 2
    if h % 2 and n > 2:
        h += 1
    return tuple(_sgn(x) * h for x in v)


def _add(*vs):
    return tuple(sum(c) for c in zip(*vs))


def _neg(v):
    return tuple(-x for x in v)


def _sub(u, v):
    return tuple(x - y for x, y in zip(u, v))


def _gilbert(o, a, b, c, out: list) -> None:
    w, h, d = _length(a), _length(b), _length(c)
    if w * h * d == 0:
        return
    # Lines: walk the only long side.
    for major, n, others in ((a, w, h * d), (b, h, w * d), (c, d, w * h)):
        if others == 1:
            step = _unit(major)
            for i in range(n):
                out.append(tuple(o[j] + i * step[j] for j in range(3)))
            return
    if w == 1:  # flat slab across the major axis: start and end cannot differ along a
        _gilbert(o, b, c, a, out)
        return

    da, db, dc = _unit(a), _unit(b), _unit(c)
    a1 = _half(a)
    if 2 * w > 3 * h and 2 * w > 3 * d:
        # Long along a: two boxes side by side.
        _gilbert(o, a1, b, c, out)
        _gilbert(_add(o, a1), _sub(a, a1), b, c, out)
    elif 3 * h > 4 * d:
        # Flat in c: a U in the (a, b) plane, c carried along: up b, across a, down b.
        b1 = _half(b)
        _gilbert(o, b1, c, a1, out)
        _gilbert(_add(o, b1), a, c, _sub(b, b1), out)
        _gilbert(_add(o, _sub(a, da), _sub(b1, db)), _neg(b1), c, _neg(_sub(a, a1)), out)
    elif 3 * d > 4 * h:
        # Flat in b: the same U in the (a, c) plane.
        c1 = _half(c)
        _gilbert(o, c1, b, a1, out)
        _gilbert(_add(o, c1), a, b, _sub(c, c1), out)
        _gilbert(_add(o, _sub(a, da), _sub(c1, dc)), _neg(c1), b, _neg(_sub(a, a1)), out)
    else:
        # Cube-like: five boxes (low/high halves along a, b, c), each ending next to the next start.
        b1, c1 = _half(b), _half(c)
        _gilbert(o, b1, c1, a1, out)  # a low, b low, c low; ends at b = b1 - 1
        _gilbert(_add(o, b1), c, a1, _sub(b, b1), out)  # a low, b high, all c; ends at top c
        _gilbert(_add(o, _sub(b1, db), _sub(c, dc)), a, _neg(b1), _neg(_sub(c, c1)), out)  # b low, c high
        _gilbert(_add(o, _sub(a, da), b1, _sub(c, dc)), _neg(c), _neg(_sub(a, a1)), _sub(b, b1), out)
        _gilbert(_add(o, _sub(a, da), _sub(b1, db)), _neg(b1), c1, _neg(_sub(a, a1)), out)  # ends at o+a-da


def gilbert_order(grid: Grid) -> torch.Tensor:
    """Raster indices of the grid's tokens along a 3-D generalized Hilbert curve.

    Works for any T x H x W (odd sizes too). Consecutive tokens are almost always face
    neighbours (a few diagonal steps where parity forces them), and every run of consecutive
    tokens stays inside a small box. Returns `perm` with `new[i] = old[perm[i]]`.
    """
    T, H, W = _check_grid(grid)
    sizes = (T, H, W)
    # Major axis = the longest one, then the others by length (ties: keep t, h, w order).
    axes = sorted(range(3), key=lambda i: -sizes[i])
    vecs = []
    for ax in axes:
        v = [0, 0, 0]
        v[ax] = sizes[ax]
        vecs.append(tuple(v))
    pts: list = []
    _gilbert((0, 0, 0), vecs[0], vecs[1], vecs[2], pts)
    p = torch.tensor(pts, dtype=torch.long)
    return (p[:, 0] * H + p[:, 1]) * W + p[:, 2]


# -- cached permutations --------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _cached(grid: Grid, mode: str, tile: Grid, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "tile":
        body = tile_order(grid, tile)
    elif mode == "gilbert":
        body = gilbert_order(grid)
    else:
        body = torch.arange(grid[0] * grid[1] * grid[2])
    perm = torch.cat([torch.arange(prefix), body + prefix])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return perm, inv


@functools.lru_cache(maxsize=64)
def _cached_on(grid: Grid, mode: str, tile: Grid, prefix: int, device: str):
    perm, inv = _cached(grid, mode, tile, prefix)
    return perm.to(device), inv.to(device)


@torch.compiler.assume_constant_result
def _constant_permutation(grid: Grid, mode: str, tile: Grid, prefix: int, device: str):
    """`_cached_on`, which torch.compile runs once at trace time and keeps as constants of the
    graph (traced, it would rebuild the permutation and copy it to the device on every call)."""
    return _cached_on(grid, mode, tile, prefix, device)


def layout_permutation(
    grid: Grid,
    mode: str = "tile",
    tile: Grid = (2, 8, 8),
    prefix: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached `(perm, inv)` LongTensors over `prefix + T*H*W` tokens.

    Prefix tokens stay in front, unpermuted. Apply with `x[:, :, perm]`, undo with
    `y[:, :, inv]`. The tensors are shared between callers: do not modify them in place.
    """
    if mode not in LAYOUT_MODES:
        raise ValueError(f"mode must be one of {LAYOUT_MODES}, got {mode!r}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be an int >= 0, got {prefix!r}")
    grid, tile = _check_grid(grid), _check_grid(tile, "tile")
    return _constant_permutation(grid, mode, tile, prefix, str(torch.device(device)))


class _PermuteTokens(torch.autograd.Function):
    """x[:, :, perm] whose backward is the gather grad[:, :, inv]: a permutation's gradient needs
    no scatter-add (advanced indexing would sort the indices and accumulate on every backward)."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(inv)
        return x.index_select(2, perm)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.index_select(2, inv), None, None


def permute_tokens(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Reorder the tokens (dim 2) of [B, H, L, D] by `perm`; `inv` must be its inverse."""
    return _PermuteTokens.apply(x, perm, inv)


@dataclass(frozen=True)
class TokenLayout:
    """A token order for one grid: `apply` permutes dim 2 of [B, H, L, D], `undo` restores it."""

    grid: Grid
    mode: str = "tile"
    tile: Grid = (2, 8, 8)
    prefix: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1] * self.grid[2]

    def permutation(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return layout_permutation(self.grid, self.mode, self.tile, self.prefix, device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mode == "none" else x[:, :, self.permutation(x.device)[0]]

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mode == "none" else x[:, :, self.permutation(x.device)[1]]
