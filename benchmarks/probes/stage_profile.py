"""Per-kernel GPU times of one forward+backward (torch.profiler), lists and pyramid variants
without host overhead (CUDA graphs), the forward kernel per level (Wan shape, H200).
Run from the repository root: python3 benchmarks/probes/stage_profile.py"""
import sys, torch, triton
sys.path.insert(0, "benchmarks")
from kernel_bench import make_levels, inputs, bench, MIXES, graph_time
from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_pyramid import build_pyramid
from psa_train.kernels.triton_forward import pyramid_forward
from psa_train.kernels.triton_autograd import triton_pyramid_attention

dev = "cuda"
gen = torch.Generator(device=dev).manual_seed(0)
B, H, L, D = 1, 12, 32760, 128
q, k, v, do = inputs((B, H, L, D), dev, gen)
n_qb, n_kb = triton.cdiv(L, 128), triton.cdiv(L, 64)
scale = D ** -0.5
cfg = tuning.get_config(D, 128, 64, q.dtype)


levels = make_levels(B, H, n_qb, n_kb, MIXES[0.15], dev, gen)
# A. per-kernel GPU times of one forward+backward through the autograd function
from torch.profiler import profile, ProfilerActivity
qd, kd, vd = (t.detach().requires_grad_(True) for t in (q, k, v))
for _ in range(3):
    triton_pyramid_attention(qd, kd, vd, levels, 128, 64, scale).backward(do)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        triton_pyramid_attention(qd, kd, vd, levels, 128, 64, scale).backward(do)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))

# B. lists and pyramid without host overhead (graph replay) and by do_bench
print("lists do_bench", bench(lambda: build_plan(levels, 64, True, transposed=False)))
print("lists graph", graph_time(lambda: build_plan(levels, 64, True, transposed=False)))
print("lists no order graph", graph_time(lambda: build_plan(levels, 64, False, transposed=False)))
for chunk in (32, 64, 128, 256):
    for w in (2, 4, 8):
        try:
            print("pyramid chunk", chunk, "warps", w, "graph", round(graph_time(lambda: build_pyramid(kd, vd, chunk, w)), 4))
        except Exception as e:
            print("pyramid", chunk, w, "failed", type(e).__name__, str(e)[:200])

# C. forward kernel per level
pyr = build_pyramid(kd, vd)
for name, mix in [("mix0.15", MIXES[0.15]), ("L1 10%", (0.10, 0, 0, 0)), ("L2 5%", (0.0, 0.05, 0, 0)),
                  ("L8 20%", (0.0, 0, 0, 0.20)), ("L1 100%", (1.0, 0, 0, 0))]:
    lv = make_levels(B, H, n_qb, n_kb, mix, dev, gen)
    plan = build_plan(lv, 64, True, transposed=False)
    t = bench(lambda: pyramid_forward(qd, kd, vd, pyr, plan, 128, 64, scale, cfg))
    lvf = lv.float()
    dens = torch.where(lvf > 0, 1 / lvf.clamp_min(1), torch.zeros_like(lvf)).mean().item()
    flops = 4 * B * H * L * L * D * dens
    print(f"fwd kernel {name}: {t:.3f} ms density {dens:.4f} {flops / t / 1e9:.0f} TFLOP/s")
