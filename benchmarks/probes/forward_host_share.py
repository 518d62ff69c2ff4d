"""The whole forward through the API, eager vs CUDA-graph replay: how much of it is host time.
Run from the repository root."""
import torch, triton
from wan_setup import B, H, L, wan_inputs
from kernel_bench import make_levels, bench, MIXES, graph_time
from psa_train.kernels import pyramid_attention
from psa_train.kernels.block_lists import build_plan

dev = "cuda"
gen, q, k, v, do = wan_inputs()
for bn in (64, 32):
    levels = make_levels(B, H, triton.cdiv(L, 128), triton.cdiv(L, bn), MIXES[0.15], dev, gen)
    fwd = lambda: pyramid_attention(q, k, v, levels, 128, bn)
    with torch.no_grad():
        print(f"bn{bn} API forward: eager {bench(fwd):.3f} ms, graph replay {graph_time(fwd):.3f} ms", flush=True)
    print(f"bn{bn} lists: eager {bench(lambda: build_plan(levels, bn, True, transposed=False)):.4f} ms, graph "
          f"{graph_time(lambda: build_plan(levels, bn, True, transposed=False)):.4f} ms", flush=True)
