"""`pyramid_attention`: argument checks and the choice between the Triton and reference paths."""

from __future__ import annotations

import torch

from .reference import default_scale, reference_pyramid_attention

LEVEL_VALUES = (0, 1, 2, 4, 8)
BLOCK_M_VALUES = (64, 128)
BLOCK_N_VALUES = (32, 64, 128)
BACKENDS = ("auto", "triton", "reference")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (64, 128)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)


def _check_tensors(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, H, L, D], got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and D (shape [B, H, L, D])"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError("q and k must hold at least one token")


def _check_levels(levels, q, k, block_m, block_n, check_values: bool) -> None:
    """Type, shape and device of the level map; its values too where check_values (the Triton
    path checks them inside its list-building kernel instead, block_lists.build_plan)."""
    if block_m not in BLOCK_M_VALUES:
        raise ValueError(f"block_m must be one of {BLOCK_M_VALUES}, got {block_m}")
    if block_n not in BLOCK_N_VALUES:
        raise ValueError(f"block_n must be one of {BLOCK_N_VALUES}, got {block_n}")
    if not isinstance(levels, torch.Tensor) or levels.dtype.is_floating_point or levels.dtype == torch.bool:
        raise ValueError("levels must be an integer tensor with values in {0, 1, 2, 4, 8}")
    batch, heads, length_q, _ = q.shape
    expected = (batch, heads, -(-length_q // block_m), -(-k.shape[-2] // block_n))
    if tuple(levels.shape) != expected:
        raise ValueError(
            f"levels must have shape [B, H, ceil(Lq/block_m), ceil(Lk/block_n)] = {expected}, "
            f"got {tuple(levels.shape)}"
        )
    if levels.device != q.device:
        raise ValueError(f"levels must be on the device of q ({q.device}), got {levels.device}")
    if not check_values:
        return
    if levels.is_cuda:
        # Reading the answer back (or copying a table of allowed values in) would stall the host
        # every call: check on the device. 0, 1, 2, 4, 8 are exactly the n in [0, 8] with n & (n-1) == 0.
        ok = (levels >= 0) & (levels <= 8) & ((levels & (levels - 1)) == 0)
        torch._assert_async(ok.all(), f"levels may only hold {LEVEL_VALUES}")
        return
    allowed = torch.tensor(LEVEL_VALUES, device=levels.device, dtype=levels.dtype)
    if not torch.isin(levels, allowed).all():
        bad = torch.unique(levels[~torch.isin(levels, allowed)])[:5].tolist()
        raise ValueError(f"levels may only hold {LEVEL_VALUES}, found {bad}")


def _resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda else "reference"
    return backend


def pyramid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    block_m: int = 128,
    block_n: int = 64,
    sm_scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention where each (query block, key block) pair is seen at a pyramid level.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; levels: integer [B, H, ceil(Lq/block_m),
    ceil(Lk/block_n)] with values in {0, 1, 2, 4, 8} (0 skips the block, s > 1 mean-pools its
    keys and values s-fold). Returns [B, H, Lq, D] in q's dtype, differentiable in q, k, v.
    backend "auto" runs Triton kernels on CUDA tensors and the PyTorch reference on CPU ones.
    """
    _check_tensors(q, k, v)
    chosen = _resolve_backend(backend, q)
    _check_levels(levels, q, k, block_m, block_n, check_values=chosen == "reference")
    if sm_scale is None:
        sm_scale = default_scale(q.shape[-1])
    sm_scale = float(sm_scale)

    if chosen == "reference":
        if q.dtype not in REFERENCE_DTYPES:
            raise ValueError(f"dtype must be one of {REFERENCE_DTYPES}, got {q.dtype}")
        return reference_pyramid_attention(q, k, v, levels, block_m, block_n, sm_scale)

    if q.dtype not in TRITON_DTYPES:
        raise ValueError(f"backend='triton' takes dtypes {TRITON_DTYPES}, got {q.dtype}")
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        raise ValueError(f"backend='triton' takes head dims D in {TRITON_HEAD_DIMS}, got {q.shape[-1]}")
    from .triton_autograd import triton_pyramid_attention  # imported lazily: triton is optional on CPU

    return triton_pyramid_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), levels.contiguous(), block_m, block_n, sm_scale
    )
