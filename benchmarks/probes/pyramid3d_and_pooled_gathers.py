"""Forward pooled-tile variants at densities 0.15 and 1.0, and a pyramid kernel that loads
[rows, s, D] blocks and sums them (measured no faster; kept here only). Run from the repository root."""
import torch, triton
import triton.language as tl
from wan_setup import B, H, L, D, SCALE, wan_inputs
from kernel_bench import make_levels, bench, MIXES
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward

dev, scale = "cuda", SCALE
gen, q, k, v, do = wan_inputs()
pyr = build_pyramid(k, v)


@triton.jit
def _pool3d(X, XO, c, bh, Lk, d, S: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr):
    Ls = (Lk + S - 1) // S
    r = c * (CHUNK // S) + tl.arange(0, CHUNK // S)
    g = tl.arange(0, S)
    t = r[:, None] * S + g[None, :]
    x = tl.load(X + bh * Lk * HEAD_DIM + t[:, :, None] * HEAD_DIM + d[None, None, :],
                mask=(t < Lk)[:, :, None], other=0.0).to(tl.float32)
    acc = tl.sum(x, axis=1)
    inv_n = 1.0 / tl.maximum(tl.minimum(Lk - r * S, S), 1).to(tl.float32)
    tl.store(XO + bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + d[None, :],
             (acc * inv_n[:, None]).to(XO.dtype.element_ty), mask=(r < Ls)[:, None])


@triton.jit
def _pool3d_kernel(K, V, K2, V2, K4, V4, K8, V8, Lk, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    _pool3d(K, K2, c, bh, Lk, d, 2, CHUNK, HEAD_DIM)
    _pool3d(V, V2, c, bh, Lk, d, 2, CHUNK, HEAD_DIM)
    _pool3d(K, K4, c, bh, Lk, d, 4, CHUNK, HEAD_DIM)
    _pool3d(V, V4, c, bh, Lk, d, 4, CHUNK, HEAD_DIM)
    _pool3d(K, K8, c, bh, Lk, d, 8, CHUNK, HEAD_DIM)
    _pool3d(V, V8, c, bh, Lk, d, 8, CHUNK, HEAD_DIM)


def pyramid3d(chunk, warps):
    outs = [(torch.empty_like(a), torch.empty_like(b)) for a, b in pyr]
    (k2, v2), (k4, v4), (k8, v8) = outs
    _pool3d_kernel[(triton.cdiv(L, chunk), B * H)](k, v, k2, v2, k4, v4, k8, v8, L, HEAD_DIM=D, CHUNK=chunk, num_warps=warps)
    return outs


print("pyramid current", round(bench(lambda: build_pyramid(k, v)), 4), flush=True)
for chunk, w in ((32, 4), (32, 8), (64, 4), (64, 8), (128, 8)):
    got = pyramid3d(chunk, w)
    err = max((a - b).abs().max().item() for pa, pb in zip(got, pyr) for a, b in zip(pa, pb))
    print("pyramid 3d", chunk, w, round(bench(lambda: pyramid3d(chunk, w)), 4), "max diff", err, flush=True)

n_qb, n_kb = triton.cdiv(L, 128), triton.cdiv(L, 64)
plans = {dd: build_plan(make_levels(B, H, n_qb, n_kb, MIXES[dd], dev, gen), 64, True, transposed=False) for dd in (0.15, 1.0)}
base = tuning.get_config(D, 128, 64, q.dtype)
for name, change in [("base", {}), ("pair 8", dict(fwd_pair_levels=(8,))),
                     ("L2 gathered 64", dict(fwd_pooled_tma=False, fwd_tiles=(64, 64, 32, 32))),
                     ("L2 gathered 64, L8 64", dict(fwd_pooled_tma=False, fwd_tiles=(64, 64, 32, 64))),
                     ("L2 gathered 32 pair 2,8", dict(fwd_pooled_tma=False, fwd_pair_levels=(2, 8))),
                     ("base (repeat)", {})]:
    cfg = tuning.replace(base, **change)
    try:
        ts = {dd: bench(lambda: pyramid_forward(q, k, v, pyr, p, 128, 64, scale, cfg)) for dd, p in plans.items()}
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:200], flush=True)
        continue
    print(f"fwd {name:26s} d0.15 {ts[0.15]:.3f} d1.0 {ts[1.0]:.3f} score {ts[0.15] + ts[1.0] / 6:.3f}", flush=True)
