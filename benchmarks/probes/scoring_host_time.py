"""Host time of block_scores + assign_levels on the CUDA path (Gluon pass 1, pooling, assignment)
with every kernel launch replaced by a no-op, on CPU tensors: our own Python and the descriptors,
without the Triton launchers or a GPU. Run from the repository root on any machine with Gluon's
Triton (3.6 or 3.8); L=4096 keeps the CPU allocations small."""
import time

import torch

import psa_train.attention.levels as levels
import psa_train.kernels.gluon_block_scores as gluon_block_scores
import psa_train.kernels.triton_assign as triton_assign
import psa_train.kernels.triton_block_scores as triton_block_scores
from psa_train.attention import PSAConfig, assign_levels, block_scores


class NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


triton_block_scores._resolve_pass1 = lambda pass1, q, k_slots: "gluon"
gluon_block_scores._block_sums_kernel = NoLaunch()
triton_block_scores._pool_scores_kernel = NoLaunch()
triton_assign._assign_kernel = NoLaunch()
levels._pick_backend = lambda scores, backend: "triton"

q, k = (torch.randn(1, 12, 4096, 128, dtype=torch.bfloat16) for _ in range(2))
cfg = PSAConfig()


def call():
    scores = block_scores(q, k, cfg.block_m, cfg.block_n, cfg.sample_fraction, cfg.score_reduction, backend="triton")
    assign_levels(scores, cfg)


for _ in range(20):
    call()
for _ in range(3):
    start = time.perf_counter()
    for _ in range(2000):
        call()
    print(f"host time per call, launches stubbed: {(time.perf_counter() - start) / 2000 * 1e6:.1f} us")
