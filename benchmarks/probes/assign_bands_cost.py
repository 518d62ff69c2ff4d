"""Level assignment at the Wan preset's scores (block_n 32: 1024 key blocks per row): the quota
bands against the threshold bands on the same scores, so the difference is the threshold's float64
cumulative mass (both sort the row the same way); eager `do_bench` and CUDA-graph replay. Run from
the repository root on a GPU."""
import functools

from wan_setup import wan_inputs  # first: puts benchmarks/ on the path
from kernel_bench import bench, graph_time

from psa_train.attention import PSAConfig, block_scores
from psa_train.attention.levels import BOUNDARY_ONE, quota_counts
from psa_train.kernels.triton_assign import assign_levels_triton

_, q, k, _, _ = wan_inputs()
wan = PSAConfig.wan21_1_3b()
for block_n in (32, 64):
    scores = block_scores(q, k, wan.block_m, block_n, wan.sample_fraction, wan.score_reduction)
    quota = {"counts": quota_counts(scores.shape[-1], PSAConfig(), None)}
    threshold = {"bounds": [float("inf") if b >= BOUNDARY_ONE else b for b in wan.boundaries(None).values()]}
    for name, bands in (("quota", quota), ("threshold", threshold), ("quota", quota)):
        run = functools.partial(assign_levels_triton, scores, **bands)
        print(f"nK={scores.shape[-1]} {name}: eager {bench(run):.4f} ms, graph {graph_time(run):.4f} ms", flush=True)
