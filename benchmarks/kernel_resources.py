"""Registers, spills, stack and shared memory of the pyramid attention kernels for sm_90, no GPU.

Why: Nsight Compute on an H200 showed all three attention kernels at 255 registers with heavy
spilling (22M local-memory requests in the dK/dV pass). This compiles the kernels for an
H100/H200 (CUDA target sm_90) on any machine with triton's bundled ptxas and prints what ptxas
reports, so register pressure can be iterated on without GPU time.

How: one forward + backward of ``triton_pyramid_attention`` runs on meta tensors at the Wan
shape with every kernel launch intercepted (nothing executes). The intercepted arguments are
exactly what the real wrappers pass (constexprs from ``get_config``/``level_tiles``, TMA
descriptors, int/float scalars), so they are specialised the way ``JITFunction.run`` does it and
compiled with ``triton.compile`` for sm_90; ptxas -v is then run on the PTX. Meta tensors have
address 0, i.e. 16-byte aligned like real CUDA allocations.

    python benchmarks/kernel_resources.py [--block-n 64] [--dim 128] [--set KEY=VALUE ...] [--all] [--gluon]

``--gluon`` adds the Hopper kernels written in Gluon (the forward, gluon_backward's dK/dV and
level-1 dQ kernels, gluon_pooled_dq, and gluon_block_scores' pass 1 with block scoring's default
options), whose launches are recorded the same way.
``--set`` overrides KernelConfig fields (values as Python literals: 8, True, "(64, 32, 32, 32)").
Columns: ptxas' registers per thread, spill stores/loads and stack frame (bytes per thread), and
triton's shared memory per program (dynamic, bytes). ``stages`` is the kernel's STAGES constexpr
(its loops' pipelining depth) where it has one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import subprocess
import sys
import tempfile
from unittest import mock

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import sm_arch_from_capability
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from psa_train.kernels import tuning
from psa_train.kernels.triton_autograd import triton_pyramid_attention
from psa_train.kernels.triton_backward import _bwd_dkdv_kernel, _bwd_dq_kernel
from psa_train.kernels.triton_block_scores import DEFAULTS as SCORE_DEFAULTS
from psa_train.kernels.triton_forward import _pyramid_fwd_kernel
from psa_train.kernels.triton_launch import LazyKernel

TARGET = GPUTarget("cuda", 90, 32)  # H100 / H200
SMEM_LIMIT = 232448  # sm_90 opt-in shared memory per block (227 KiB); triton checks it only at load
ATTENTION_KERNELS = (_pyramid_fwd_kernel, _bwd_dq_kernel, _bwd_dkdv_kernel)


def record_launches(batch, heads, length, dim, block_m, block_n, dtype=torch.bfloat16):
    """(LazyKernel, args, kwargs) of every launch of one forward + backward, on meta tensors."""
    launches = []

    def getitem(self, grid):
        return lambda *args, **kwargs: launches.append((self, args, kwargs))

    def t(*shape, dt=dtype, grad=False):
        return torch.empty(shape, dtype=dt, device="meta", requires_grad=grad)

    q, k, v = (t(batch, heads, length, dim, grad=True) for _ in range(3))
    levels = t(batch, heads, triton.cdiv(length, block_m), triton.cdiv(length, block_n), dt=torch.int32)
    with mock.patch.object(LazyKernel, "__getitem__", getitem):
        out = triton_pyramid_attention(q, k, v, levels, block_m, block_n, dim ** -0.5)
        out.backward(torch.empty_like(out))
    return launches


def record_gluon_launches(batch, heads, length, dim, block_m, block_n, dtype=torch.bfloat16):
    """(kernel, args, kwargs) of the Gluon kernels' launches, on meta tensors: the forward, the dK/dV and level-1
    dQ kernels of one backward, and block scoring's pass 1 at a quarter of the tokens sampled."""
    from types import SimpleNamespace

    from psa_train.kernels import gluon_backward, gluon_block_scores, gluon_forward, gluon_pooled_dq

    launches = []

    class Recorder:
        def __init__(self, jit):
            self.jit = jit

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.jit, args, kwargs))

    def t(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    q, k, v, do = (t(batch, heads, length, dim) for _ in range(4))
    lse, delta = (t(batch, heads, length, dt=torch.float32) for _ in range(2))
    partial = t(batch, heads, length, dim, dt=torch.float32)
    pooled = [t(batch, heads, triton.cdiv(length, s), dim, dt=torch.float32) for s in (2, 2, 4, 4, 8, 8)]
    n_qb, n_kb, bh = triton.cdiv(length, block_m), triton.cdiv(length, block_n), batch * heads
    plan = SimpleNamespace(idx=t(bh, n_qb, n_kb, dt=torch.int32), cnt=t(bh, n_qb, 4, dt=torch.int32),
                           order=t(bh, n_qb, dt=torch.int32), idx_t=t(bh, n_kb, n_qb, dt=torch.int32),
                           cnt_t=t(bh, n_kb, dt=torch.int32), order_t=t(bh, n_kb, dt=torch.int32))
    slots = max(1, block_n // 4)
    sampled = triton.cdiv(length, block_n) * slots
    kernels = {"_dkdv_kernel": gluon_backward, "_dq1_kernel": gluon_backward, "_block_sums_kernel": gluon_block_scores,
               "_pool_kernel": gluon_block_scores,
               "_fwd_kernel": gluon_forward, "_pooled_dq_kernel": gluon_pooled_dq}
    with contextlib.ExitStack() as stack:
        for name, module in kernels.items():
            stack.enter_context(mock.patch.object(module, name, Recorder(getattr(module, name))))
        gluon_backward.launch_dkdv_gluon(q, k, v, do, lse, delta, pooled, plan, block_m, block_n, dim ** -0.5)
        gluon_backward.launch_dq1_gluon(q, k, v, do, lse, delta, plan, block_m, block_n, dim ** -0.5, partial)
        cfg = tuning.get_config(dim, block_m, block_n, dtype)
        pyramid = [tuple(t(batch, heads, triton.cdiv(length, s), dim) for _ in range(2)) for s in (2, 4, 8)]
        gluon_pooled_dq.launch_pooled_dq_gluon(q, k, do, lse, delta, pyramid, pooled, plan, block_m, block_n,
                                               dim ** -0.5)
        gluon_forward.launch_fwd_gluon(q, k, v, pyramid, plan, block_m, block_n, dim ** -0.5,
                                       cfg.fwd_gluon_tile, cfg.fwd_gluon_stages, cfg.fwd_gluon_pingpong)
        gluon_block_scores.block_sums_gluon(t(batch, heads, sampled, dim), t(batch, heads, sampled, dim),
                                            t(sampled, dt=torch.int8), slots, 0.1, n_kb, torch.float16,
                                            SCORE_DEFAULTS["gluon_consumers"], SCORE_DEFAULTS["gluon_tile"])
        q_slots = block_m // 4  # the Gluon pooling after it, default quarter sampled
        q_sampled = triton.cdiv(length, block_m) * q_slots
        gluon_block_scores.pool_scores_gluon(t(batch, heads, q_sampled, n_kb, dt=torch.float16),
                                             t(batch, heads, q_sampled, n_kb // 8, dt=torch.float32),
                                             t(batch, heads, q_sampled, dt=torch.float32), t(q_sampled, dt=torch.int8),
                                             q_slots, 8)
    return launches


def kernel_name(kernel) -> str:
    return kernel.__name__ if isinstance(kernel, LazyKernel) else kernel.fn.__name__


def compile_launch(lazy, args, kwargs):
    """Compile one recorded launch for TARGET, specialised as JITFunction.run would on a GPU.
    `lazy`: a LazyKernel, or a Gluon kernel (record_gluon_launches)."""
    jit = lazy.variant(False) if isinstance(lazy, LazyKernel) else lazy
    backend = make_backend(TARGET)
    kwargs = {**kwargs, "debug": kwargs.get("debug") or knobs.runtime.debug,
              "instrumentation_mode": knobs.compilation.instrumentation_mode}
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound_args, specialization, options)
    source = ASTSource
    if getattr(jit, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    compiled = triton.compile(source(jit, signature, constexprs, attrs), target=TARGET, options=options.__dict__)
    return compiled, {jit.params[path[0]].name: value for path, value in constexprs.items()}


def ptxas_usage(ptxas, ptx, name):
    """Registers, spill stores/loads and stack frame (bytes) ptxas reports for entry `name`.
    Flags as triton's make_cubin passes them (register allocation depends on them)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/k.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(TARGET.arch)}",
               src, "-o", f"{tmp}/k.cubin"]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    props = re.search(rf"Function properties for {re.escape(name)}\s*\n\s*(\d+) bytes stack frame, "
                      r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = re.search(rf"Compiling entry function '{re.escape(name)}'.*?Used (\d+) registers", log, re.DOTALL)
    if not (props and regs):
        raise RuntimeError(f"could not parse ptxas output for {name}:\n{log}")
    stack, stores, loads = map(int, props.groups())
    return int(regs.group(1)), stores, loads, stack


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--block-n", type=int, default=64)
    p.add_argument("--block-m", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=32760)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="KernelConfig override")
    p.add_argument("--all", action="store_true", help="also the helper kernels (lists, pyramid, delta)")
    p.add_argument("--gluon", action="store_true", help="also the Gluon kernels (Hopper)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each kernel's constexprs")
    a = p.parse_args()

    try:
        ptxas = knobs.nvidia.ptxas.path
    except RuntimeError as e:
        sys.exit(f"kernel_resources: ptxas not found ({e}); set TRITON_PTXAS_PATH or install triton's CUDA tools")

    base = tuning.get_config(a.dim, a.block_m, a.block_n, torch.bfloat16)
    tuning.OVERRIDE = dataclasses.replace(base, **tuning.parse_overrides(a.set))
    print(f"sm_90 (ptxas {ptxas}), B=1 H={a.heads} L={a.seq_len} D={a.dim} bf16 "
          f"block_m={a.block_m} block_n={a.block_n}\n{tuning.OVERRIDE}\n")
    launches = record_launches(1, a.heads, a.seq_len, a.dim, a.block_m, a.block_n)
    if a.gluon:
        launches += record_gluon_launches(1, a.heads, a.seq_len, a.dim, a.block_m, a.block_n)

    print(f"{'kernel':<22}{'warps':>6}{'stages':>7}{'regs':>6}{'spill_st':>10}{'spill_ld':>10}"
          f"{'stack':>7}{'smem':>8}")
    failed = 0
    for lazy, args, kwargs in launches:
        if not (a.all or lazy in ATTENTION_KERNELS or not isinstance(lazy, LazyKernel)):
            continue
        try:
            compiled, consts = compile_launch(lazy, args, kwargs)
        except Exception as e:  # noqa: BLE001  (any compile error: report it, go on with the others)
            failed += 1
            print(f"{kernel_name(lazy):<22}{kwargs.get('num_warps', 4):>6}  failed: {type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            continue
        md = compiled.metadata
        regs, stores, loads, stack = ptxas_usage(ptxas, compiled.asm["ptx"], md.name)
        stages = consts.get("STAGES", md.num_stages)
        print(f"{kernel_name(lazy):<22}{md.num_warps:>6}{stages:>7}{regs:>6}{stores:>10}{loads:>10}"
              f"{stack:>7}{md.shared:>8}{'  > sm_90 limit, would not launch' if md.shared > SMEM_LIMIT else ''}")
        if a.verbose:
            print(f"    {', '.join(f'{k}={v}' for k, v in consts.items() if v is not None)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
