"""Host time of `pyramid_attention` (forward, and forward + backward) on the CUDA code path, with
every kernel launch replaced by a no-op, on meta tensors: our own Python, the torch ops' host side
and the TMA descriptors, without the Triton launchers or a GPU. The Gluon kernels are taken as
on an H200 (`on_hopper` patched). Minimum and median of seven rounds of 100 calls.

    python3 benchmarks/probes/attention_host_time.py [wan|vit]
"""
import contextlib
import sys
import time
from unittest import mock

import torch

from psa_train.kernels import api, gluon_backward, gluon_forward, gluon_pooled_dq, pyramid_attention
from psa_train.kernels.triton_launch import LazyKernel


class NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


SHAPES = {"wan": (1, 12, 32760, 128), "vit": (8, 12, 1568, 64)}
batch, heads, length, dim = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "wan"]
q, k, v = (torch.empty(batch, heads, length, dim, dtype=torch.bfloat16, device="meta", requires_grad=True)
           for _ in range(3))
levels = torch.empty(batch, heads, -(-length // 128), -(-length // 64), dtype=torch.int32, device="meta")


def forward():
    with torch.no_grad():
        pyramid_attention(q, k, v, levels, 128, 64, backend="triton")


def forward_backward():
    out = pyramid_attention(q, k, v, levels, 128, 64, backend="triton")
    out.backward(torch.empty_like(out))


with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(LazyKernel, "__getitem__", NoLaunch.__getitem__))
    stack.enter_context(mock.patch.object(api, "_resolve_backend", lambda backend, q: "triton"))
    for module in (gluon_backward, gluon_forward):
        stack.enter_context(mock.patch.object(module, "on_hopper", lambda device: True))
    for module, name in ((gluon_forward, "_fwd_kernel"), (gluon_backward, "_dkdv_kernel"),
                         (gluon_backward, "_dq1_kernel"), (gluon_pooled_dq, "_pooled_dq_kernel")):
        stack.enter_context(mock.patch.object(module, name, NoLaunch()))
    for label, fn in (("forward", forward), ("forward + backward", forward_backward)):
        for _ in range(10):
            fn()
        rounds = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(100):
                fn()
            rounds.append((time.perf_counter() - start) / 100 * 1e6)
        print(f"{label}: min {min(rounds):.1f} us, median {sorted(rounds)[3]:.1f} us per call", flush=True)
