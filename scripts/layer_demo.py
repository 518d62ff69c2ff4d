"""Run one PSA layer on real-sized CPU tensors and compare it with dense attention.

The inputs are not noise: queries and keys share one feature field that is smooth over the 3-D
token grid, so, as in video transformers, a token attends mostly to its neighbourhood and block
scores mean something; values are another smooth field.
"""

from __future__ import annotations

import argparse
import time

import torch

from psa_train.attention import PSAAttention, PSAConfig


def smooth_field(heads, grid, dim, gen, scale=1.0):
    """[1, H, T*H*W, D] features that vary smoothly over the (T, H, W) grid."""
    frames, height, width = grid
    coarse_size = (max(1, frames // 2), max(1, height // 4), max(1, width // 4))
    coarse = torch.randn(heads, dim, *coarse_size, generator=gen) * scale
    smooth = torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear", align_corners=False)
    return smooth.flatten(2).transpose(1, 2).unsqueeze(0)


def video_like_qkv(heads, grid, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    shared = smooth_field(heads, grid, dim, gen, scale=2.0)
    noise = lambda: 0.5 * torch.randn(shared.shape, generator=gen)  # noqa: E731
    return shared + noise(), shared + noise(), smooth_field(heads, grid, dim, gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", type=int, nargs=3, default=(8, 32, 32), metavar=("T", "H", "W"))
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    grid = tuple(args.grid)
    q, k, v = video_like_qkv(args.heads, grid, args.head_dim, args.seed)
    print(f"tokens: {q.shape[2]} (grid {grid}), heads {args.heads}, head dim {args.head_dim}, float32 on CPU")

    start = time.perf_counter()
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    dense_s = time.perf_counter() - start

    print(f"{'config':<26}{'density':>9}{'rel. error':>12}{'seconds':>9}")
    print(f"{'dense SDPA':<26}{1.0:>9.3f}{0.0:>12.4f}{dense_s:>9.2f}")
    presets = {"wan21_1_3b (threshold)": PSAConfig.wan21_1_3b(), "default_quota": PSAConfig.default_quota()}
    for name, config in presets.items():
        layer = PSAAttention(config)
        start = time.perf_counter()
        with torch.no_grad():
            out = layer(q, k, v, grid=grid)
        seconds = time.perf_counter() - start
        error = ((out - dense).norm() / dense.norm()).item()
        print(f"{name:<26}{layer.last_density:>9.3f}{error:>12.4f}{seconds:>9.2f}")


if __name__ == "__main__":
    main()
