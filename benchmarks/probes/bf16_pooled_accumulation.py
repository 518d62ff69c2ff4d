"""What summing the pooled levels' dK̄/dV̄ in bf16 instead of fp32 would cost in accuracy (CPU).

Why: at the Wan shape the fp32 atomics that add every query block's pooled-key gradients into the
level buffers cost 1.6-2.1 ms of a 9.5 ms forward + backward and are bandwidth-bound
(benchmarks/NOTES.md, seventh session); bf16 atomics would move half the bytes, but every add
rounds the running sum to bf16. This simulates one head of that map in float64: the exact
per-(query block, pooled entry) contributions, added to the buffers one by one in a random order
(the atomics' arrival order) in fp32 and in bf16 (contribution rounded to bf16, then the sum), the
level-1 part exact, the pooled buffers folded onto member keys; then compares dK and dV with the
exact float64 gradients, next to the error of merely rounding the exact gradients to bf16 (what
the kernels' output dtype costs anyway).

    python benchmarks/probes/bf16_pooled_accumulation.py [--length 32768] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch

from psa_train.kernels.reference import mean_pool

BLOCK_M, BLOCK_N, DIM = 128, 64, 128
MIX = (0.10, 0.05, 0.0, 0.20)  # kernel_bench's density 0.15: shares of key blocks at levels 1, 2, 4, 8


def random_levels(n_qb: int, n_kb: int, gen: torch.Generator) -> torch.Tensor:
    """Exact per-row quotas in a random order, as kernel_bench.make_levels."""
    per_rank = torch.zeros(n_kb, dtype=torch.int64)
    start = 0
    for s, share in zip((1, 2, 4, 8), MIX):
        count = max(1, round(share * n_kb)) if s == 1 else round(share * n_kb)
        per_rank[start:start + count] = s
        start += count
    return per_rank[torch.rand(n_qb, n_kb, generator=gen).argsort(-1)]


def pooled_gradients(q, k, v, do, levels, scale):
    """Exact dK, dV of level 1 and, per pooled level, the list of (pooled rows, dK̄ part, dV̄ part)
    each query block contributes; float64 throughout."""
    length = k.shape[0]
    pyramid = {s: (mean_pool(k, s)[0], mean_pool(v, s)[0]) for s in (2, 4, 8)}
    dk1, dv1 = torch.zeros_like(k), torch.zeros_like(v)
    parts = {s: [] for s in (2, 4, 8)}
    for i in range(levels.shape[0]):
        rows = slice(i * BLOCK_M, (i + 1) * BLOCK_M)
        qi, doi = q[rows], do[rows]
        cols_k, cols_v, bias, owners = [], [], [], []
        for j in torch.nonzero(levels[i]).flatten().tolist():
            s = int(levels[i, j])
            if s == 1:
                keys = torch.arange(j * BLOCK_N, min((j + 1) * BLOCK_N, length))
                cols_k.append(k[keys]), cols_v.append(v[keys])
                bias.append(torch.zeros(len(keys), dtype=q.dtype))
            else:
                r = BLOCK_N // s
                keys = torch.arange(j * r, (j + 1) * r)
                cols_k.append(pyramid[s][0][keys]), cols_v.append(pyramid[s][1][keys])
                bias.append(torch.full((r,), math.log(s), dtype=q.dtype))
            owners.append((s, keys))
        kc, vc, b = torch.cat(cols_k), torch.cat(cols_v), torch.cat(bias)
        p = torch.softmax(qi @ kc.T * scale + b, dim=-1)
        out = p @ vc
        dp = doi @ vc.T
        ds = p * (dp - (out * doi).sum(-1, keepdim=True))
        at = 0
        for s, keys in owners:
            cols = slice(at, at + len(keys))
            at += len(keys)
            dk_part, dv_part = scale * ds[:, cols].T @ qi, p[:, cols].T @ doi
            if s == 1:
                dk1[keys] += dk_part
                dv1[keys] += dv_part
            else:
                parts[s].append((keys, dk_part, dv_part))
    return dk1, dv1, parts


def accumulate(parts, length, dtype, gen):
    """Level buffers summed contribution by contribution in a random order, rounding to `dtype`."""
    bufs = {}
    for s, items in parts.items():
        buf_k = torch.zeros(-(-length // s), DIM, dtype=dtype)
        buf_v = torch.zeros_like(buf_k)
        for n in torch.randperm(len(items), generator=gen).tolist():
            keys, dk_part, dv_part = items[n]
            buf_k[keys] = (buf_k[keys].double() + dk_part.to(dtype).double()).to(dtype)
            buf_v[keys] = (buf_v[keys].double() + dv_part.to(dtype).double()).to(dtype)
        bufs[s] = (buf_k.double(), buf_v.double())
    return bufs


def fold(dk1, dv1, bufs):
    """dK[t] = level-1 part + Σ_s dK̄_s[t // s] / s (no partial groups: the length is a multiple of 64)."""
    dk, dv = dk1.clone(), dv1.clone()
    for s, (buf_k, buf_v) in bufs.items():
        dk += buf_k.repeat_interleave(s, dim=0)[: dk.shape[0]] / s
        dv += buf_v.repeat_interleave(s, dim=0)[: dv.shape[0]] / s
    return dk, dv


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.length % BLOCK_M:
        raise SystemExit(f"--length must be a multiple of {BLOCK_M} (the fold here assumes whole pooled groups)")
    gen = torch.Generator().manual_seed(args.seed)
    q, k, v, do = (torch.randn(args.length, DIM, generator=gen).bfloat16().double() for _ in range(4))
    levels = random_levels(args.length // BLOCK_M, args.length // BLOCK_N, gen)
    dk1, dv1, parts = pooled_gradients(q, k, v, do, levels, DIM ** -0.5)
    sums64 = accumulate(parts, args.length, torch.float64, gen)
    exact = fold(dk1, dv1, sums64)
    per_row = {s: len(items) * (BLOCK_N // s) / -(-args.length // s) for s, items in parts.items() if items}
    print(f"one head, L={args.length}, D={DIM}, {BLOCK_M}x{BLOCK_N} blocks, levels 1/2/4/8 = {MIX}; "
          f"contributions per pooled row: " + ", ".join(f"level {s}: {c:.1f}" for s, c in per_row.items()))
    pooled_exact = fold(torch.zeros_like(dk1), torch.zeros_like(dv1), sums64)
    for name, g, pg in (("dK", exact[0], pooled_exact[0]), ("dV", exact[1], pooled_exact[1])):
        print(f"{name}: pooled part's share of the gradient norm {pg.norm() / g.norm():.3f}; "
              f"relative error of the exact gradient rounded to bf16 {rel(g.bfloat16().double(), g):.2e}")
    for dtype in (torch.float32, torch.bfloat16):
        dk, dv = fold(dk1, dv1, accumulate(parts, args.length, dtype, gen))
        for name, got, want in (("dK", dk, exact[0]), ("dV", dv, exact[1])):
            print(f"pooled sums in {str(dtype)[6:]}: {name} relative error {rel(got, want):.2e} "
                  f"(then rounded to bf16: {rel(got.bfloat16().double(), want):.2e}), "
                  f"max |error| / max |{name}| {((got - want).abs().max() / want.abs().max()).item():.2e}")


if __name__ == "__main__":
    main()
