"""How fast can the token layout's permutation of [B, H, L, D] be, in plain torch? (GPU)

Why: in the VideoMAE-B Lightning step the PSA layers' permutations (q, k, v forward, the output
back, and the four gradients: 8 per layer and step) ran as 96 gather kernels of ~36 us each,
3.5 ms of the step's GPU time (`lightning_step_bench.py --profile`). The inputs are HF's views
(a [B, L, H, D] projection transposed to [B, H, L, D]); the kernels need contiguous [B, H, L, D].
Times (triton.testing.do_bench, median) of each formulation at the ViT and Wan shapes, with the
bytes moved at the end as an effective bandwidth.

    python3 benchmarks/probes/permute_variants.py
"""

import torch
from triton.testing import do_bench

SHAPES = {"vit": (8, 12, 1568, 64), "wan": (1, 12, 32760, 128)}


def variants():
    def index_select(x, perm):
        return x.index_select(2, perm)

    def advanced(x, perm):
        return x[:, :, perm]

    def rows_then_contiguous(x, perm):  # gather whole [H, D] rows of the [B, L, H, D] storage
        return x.transpose(1, 2).index_select(1, perm).transpose(1, 2).contiguous()

    def contiguous_then_select(x, perm):
        return x.contiguous().index_select(2, perm)

    compiled = torch.compile(index_select, dynamic=False)
    return {"index_select (today)": index_select, "x[:, :, perm]": advanced,
            "[B,L,H,D] row select, then contiguous": rows_then_contiguous,
            "contiguous, then index_select": contiguous_then_select, "torch.compile(index_select)": compiled}


def main():
    for name, (b, h, length, d) in SHAPES.items():
        base = torch.randn(b, length, h, d, device="cuda", dtype=torch.bfloat16)
        x = base.transpose(1, 2)  # as HF hands q, k, v over
        perm = torch.randperm(length, device="cuda")
        expected = x.index_select(2, perm)
        moved = 2 * x.numel() * x.element_size()
        for label, fn in variants().items():
            out = fn(x, perm)
            assert out.is_contiguous() and torch.equal(out, expected), label
            ms = do_bench(lambda: fn(x, perm))
            print(f"{name} {label:40s} {ms * 1e3:8.1f} us  {moved / ms / 1e9:6.2f} TB/s", flush=True)
        xc = x.contiguous()
        ms = do_bench(lambda: xc.index_select(2, perm))
        print(f"{name} {'index_select of a contiguous input':40s} {ms * 1e3:8.1f} us  {moved / ms / 1e9:6.2f} TB/s")


if __name__ == "__main__":
    main()
