"""What the Gluon kernels (gluon_block_scores, gluon_backward) import, and where they may run.

Gluon is Triton's experimental lower-level dialect: layouts, shared memory, mbarriers, TMA, wgmma
and warp specialisation are written out. Its API moves between releases, so the kernels are used
only with the Triton versions they were built against: run on an H200 with 3.6, compiled for
sm_90 with 3.8 (benchmarks/kernel_resources.py --gluon); anything else takes the Triton kernels.
"""

from __future__ import annotations

import functools

import torch
import triton

TESTED_VERSIONS = ((3, 6), (3, 8))  # (major, minor) releases

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    HAVE_GLUON = tuple(int(x) for x in triton.__version__.split(".")[:2]) in TESTED_VERSIONS
except ImportError:  # pragma: no cover - depends on the installed Triton
    HAVE_GLUON = False


if HAVE_GLUON:

    @gluon.constexpr_function
    def wgmma_layout(n):
        """Register layout of one warpgroup's (4 warps) product accumulators, [64·k, n]."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])

    @gluon.jit
    def barriers(N: gl.constexpr, ARRIVALS: gl.constexpr):
        """N mbarriers in shared memory, each completing a phase on ARRIVALS arrivals (one for a TMA
        transaction or a single warpgroup)."""
        bars = gl.allocate_shared_memory(gl.int64, [N, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(N):
            mbarrier.init(bars.index(s), count=ARRIVALS)
        return bars

    @gluon.jit
    def ring_barriers(SLOTS: gl.constexpr, READERS: gl.constexpr):
        """mbarriers of a ring of SLOTS shared-memory buffers: `ready[s]` completes when slot s is
        filled (one TMA transaction), `empty[s]` when its READERS consumer warpgroups are done."""
        return barriers(SLOTS, 1), barriers(SLOTS, READERS)

    @gluon.jit
    def query_block(IDX, ORDER, n_qb, n_kb, REORDER: gl.constexpr):
        """This program's (head, query block, row of the per-query-block lists, list): grid axis 0
        walks a head's query blocks, heaviest first when REORDER (ORDER), axis 1 the heads."""
        pid = gl.program_id(0)
        bh = gl.program_id(1).to(gl.int64)
        if REORDER:
            i = gl.load(ORDER + bh * n_qb + pid)
        else:
            i = pid
        row = bh * n_qb + i
        return bh, i, row, IDX + row * n_kb

    @gluon.jit
    def load_pair(desc_a, desc_b, row, bar, buf_a, buf_b, pred=True):
        """Rows `row` of two same-shaped operands into two buffers by TMA; `bar` completes with both."""
        mbarrier.expect(bar, desc_a.block_type.nbytes + desc_b.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc_a, [row, 0], bar, buf_a, pred=pred)
        tma.async_copy_global_to_shared(desc_b, [row, 0], bar, buf_b, pred=pred)


def on_hopper(device: torch.device) -> bool:
    """Gluon usable and `device` a Hopper GPU (compute capability 9.x: wgmma, TMA, setmaxnreg)."""
    return HAVE_GLUON and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def descriptor(x: torch.Tensor, rows: int):
    """TMA descriptor of contiguous 16-bit x [..., L, D] as [prod(...) * L, D] with (rows, D) boxes."""
    dim = x.shape[-1]
    return TensorDescriptor.from_tensor(x.view(-1, dim), [rows, dim], _shared_layout(rows, dim, x.dtype))


@functools.lru_cache(maxsize=None)
def _shared_layout(rows: int, dim: int, dtype: torch.dtype):
    """The swizzled shared-memory layout of a (rows, dim) box, built once: building it costs more
    host time than the descriptor itself, and a forward + backward makes ~25 descriptors."""
    el = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([rows, dim], el)


__all__ = ["HAVE_GLUON", "TensorDescriptor", "barriers", "descriptor", "fence_async_shared", "gl", "gluon", "load_pair",
           "mbarrier", "on_hopper", "query_block", "ring_barriers", "tma", "warpgroup_mma", "warpgroup_mma_wait",
           "wgmma_layout"]
