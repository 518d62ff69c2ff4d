"""The best vendor attention at the shape of block scoring's pass 1 (a quarter of the Wan length's rows,
L = 8190): cuDNN and flash SDPA forwards there and at the full length, with their TFLOP/s and
exponentials per second, and a bf16 GEMM for the tensor-core ceiling. Pass 1 computes the same
exponentials with half of their products (no P V). Run on a GPU."""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

g = torch.Generator(device="cuda").manual_seed(0)
for L in (8190, 32760):
    q, k, v = (torch.randn(1, 12, L, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    for be in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(be):
            F.scaled_dot_product_attention(q, k, v)
            ms = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(q, k, v), rep=200)
        fl = 4 * 12 * L * L * 128
        print(f"L={L} {be.name}: {ms:.3f} ms, {fl / ms / 1e9:.0f} TFLOP/s (QK^T + PV), {12 * L * L / ms / 1e9:.2f} T exp/s", flush=True)
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
ms = triton.testing.do_bench(lambda: a @ b, rep=200)
print(f"bf16 GEMM 8192^3: {ms:.3f} ms, {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
