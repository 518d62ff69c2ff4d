"""Would fp8 (e4m3) products in block scoring change the level maps? (CPU)

Why: block scoring's pass 1 is a sampled Q Kᵀ; in bf16 its products alone take 0.26 ms at the
matrix ceiling of an H200, so the issue's scoring target (≤ 15 % of a 2.3 ms forward) is out of
reach without products twice as fast (benchmarks/NOTES.md). Gluon (triton 3.6) compiles fp8
wgmma for sm_90 (m64nNk32). This measures what the cheaper products would do to the levels: block
scores from Q and K rounded to e4m3 (one scale per head: amax / 448) against bf16 ones, both at
the default sampled share, each compared with the levels of exact scores (every token sampled).
The sampling itself is the yardstick: fp8 is harmless if it moves the levels much less than
sampling a quarter of the tokens already does.

Inputs: random Gaussian q, k (flat attention: rankings are noise) and structured ones (smooth
positional features plus noise, with one large outlier channel as real models have), one head
each, L = 8192, D = 128, blocks 128 x 64.

    python benchmarks/probes/fp8_scoring_accuracy.py
"""

from __future__ import annotations

import torch

from psa_train.attention.config import PSAConfig
from psa_train.attention.levels import assign_levels
from psa_train.attention.scoring import block_scores

LENGTH, DIM = 8192, 128
E4M3_MAX = 448.0


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 with one scale per head (amax / 448), returned dequantised."""
    scale = x.abs().amax(dim=(-2, -1), keepdim=True) / E4M3_MAX
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


def inputs(kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "gaussian":
        q, k = (torch.randn(1, 1, LENGTH, DIM, generator=gen) for _ in range(2))
    else:  # tokens see their neighbourhood: shared positional features, noise, an outlier channel
        pos = torch.arange(LENGTH, dtype=torch.float32)[:, None]
        freq = torch.logspace(-4, -1, DIM // 2)[None, :]
        pe = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=-1) * 2.0
        q = pe + 0.7 * torch.randn(LENGTH, DIM, generator=gen)
        k = pe + 0.7 * torch.randn(LENGTH, DIM, generator=gen)
        k[:, 0] += 20.0  # a channel every key carries at large magnitude (shifts no ranking, stresses the scale)
        q, k = q[None, None], k[None, None]
    return q.bfloat16().float(), k.bfloat16().float()


def compare(levels: torch.Tensor, exact: torch.Tensor) -> str:
    agree = (levels == exact).float().mean().item()
    l1 = exact == 1
    recall = ((levels == 1) & l1).sum().item() / max(l1.sum().item(), 1)
    return f"same level {agree:.3f}, level-1 recall {recall:.3f}"


# the level assignments compared (the sample-share probe uses them too)
CONFIGS = {"quota (PSAConfig.default_quota)": PSAConfig.default_quota(),
           "threshold (PSAConfig.wan21_1_3b bands, 128x64 blocks)": PSAConfig.wan21_1_3b(block_n=64)}


def main():
    gen = torch.Generator().manual_seed(0)
    for kind in ("gaussian", "structured"):
        q, k = inputs(kind, gen)
        exact = block_scores(q, k, 128, 64, 1.0, backend="torch")
        sampled = block_scores(q, k, 128, 64, 0.25, backend="torch")
        fp8 = block_scores(to_e4m3(q), to_e4m3(k), 128, 64, 0.25, backend="torch")
        fp8_all = block_scores(to_e4m3(q), to_e4m3(k), 128, 64, 1.0, backend="torch")
        print(f"{kind}: score rel. difference fp8 vs bf16 at a quarter sampled "
              f"{((fp8 - sampled).norm() / sampled.norm()).item():.2e}, every token sampled "
              f"{((fp8_all - exact).norm() / exact.norm()).item():.2e}; a quarter vs every token (bf16) "
              f"{((sampled - exact).norm() / exact.norm()).item():.2e}")
        for name, cfg in CONFIGS.items():
            ref = assign_levels(exact, cfg, backend="torch")
            print(f"  {name}: bf16, a quarter sampled: {compare(assign_levels(sampled, cfg, backend='torch'), ref)}"
                  f" | fp8, a quarter sampled: {compare(assign_levels(fp8, cfg, backend='torch'), ref)}"
                  f" | fp8, every token: {compare(assign_levels(fp8_all, cfg, backend='torch'), ref)}")


if __name__ == "__main__":
    main()
