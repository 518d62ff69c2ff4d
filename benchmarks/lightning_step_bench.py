"""Training steps of `VideoClassifier` through Lightning, eager against `model.compile`.

What `recipes/videomae_distill.yaml` runs, minus the data: VideoMAE-B's architecture (random
weights, 400 classes), a frozen bf16 teacher copy and KL + cross-entropy, AdamW, bf16-mixed
precision, batch 8 of 16x224^2 clips (1568 tokens). The clips are random tensors made on the
device before the run, so the time is the module's. "psa" runs the recipe's quota bands under
SparsityAnnealing with a new budget every step (0.99 -> 1, the density of budget 1); "dense" runs
budget 0 (dense SDPA, no annealing). Prints one table: median step ms over the timed steps
(each step's time taken between synchronised batch starts), time to the end of the warm-up
steps (compilation included), dynamo's graphs, peak memory.

    PYTHONPATH=. python3 benchmarks/lightning_step_bench.py --compile none reduce-overhead   # on an H200
    PYTHONPATH=. python3 benchmarks/lightning_step_bench.py --compile none --profile   # GPU kernels per step
    PYTHONPATH=. python3 benchmarks/lightning_step_bench.py --arch tiny --device cpu --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch

PSA = {"block_m": 128, "block_n": 64, "band_mode": "quota", "bands": {1: 0.15, 2: 0.10, 4: 0.10, 8: 0.15},
       "layout": "tile", "tile_size": [2, 8, 8], "budget": 1.0}
ARCHS = {"videomae-b": ("videomae-base-arch", 16, 224, PSA),
         "tiny": ("tiny", 8, 64, {**PSA, "block_m": 64, "block_n": 32, "tile_size": [2, 4, 4]})}


class StepProfile(pl.Callback):
    """torch.profiler (CUDA activity) over the timed steps: GPU kernel time per step, to set against
    the step time (the rest is the GPU waiting for the host), and the kernels that take most of it."""

    def __init__(self, first_step: int) -> None:
        self.first_step = first_step
        self.profiler: torch.profiler.profile | None = None
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.first_step:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
        if self.profiler is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize()
        self.profiler.__exit__(None, None, None)

    def summary(self, top: int = 15) -> tuple[float, str]:
        kernels = [e for e in self.profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
        per_step = sum(e.self_device_time_total for e in kernels) / 1e3 / self.steps
        lines = [f"    {e.self_device_time_total / 1e3 / self.steps:7.3f} ms {e.count / self.steps:6.1f}x  {e.key[:100]}"
                 for e in kernels[:top]]
        return per_step, "\n".join(lines)


class StepTimer(pl.Callback):
    """Wall time between synchronised starts of consecutive training batches."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.on_train_batch_start(trainer, pl_module, None, -1)


def _batches(n: int, args, device: torch.device) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    _, frames, size, _ = ARCHS[args.arch]
    shape = (args.batch, 3, frames, size, size)
    return [{"video": (torch.rand(shape, generator=g) * 2 - 1).to(device),
             "label": torch.randint(0, 400, (args.batch,), generator=g).to(device)} for _ in range(n)]


def run(variant: str, compile_mode: str, args) -> dict:
    from torch._dynamo.utils import counters

    from psa_train.callbacks import SparsityAnnealing
    from psa_train.modules.video_classifier import VideoClassifier

    device = torch.device(args.device)
    backbone, _, _, psa = ARCHS[args.arch]
    torch._dynamo.reset()
    counters.clear()
    pl.seed_everything(0, verbose=False)
    steps = args.warmup + args.steps
    model = VideoClassifier(backbone=backbone, num_classes=400, teacher="copy", teacher_dtype="bfloat16",
                            kd_weight=1.0, kd_temperature=2.0, label_smoothing=0.1, lr=2e-5,
                            psa={**psa, "budget": 1.0 if variant == "psa" else 0.0},
                            compile=None if compile_mode == "none" else compile_mode)
    timer = StepTimer(device)
    callbacks: list[pl.Callback] = [timer]
    profile = StepProfile(args.warmup) if args.profile else None
    if profile is not None:
        callbacks.append(profile)
    if variant == "psa":
        callbacks.append(SparsityAnnealing(start_budget=0.99, end_budget=1.0, start_step=0, end_step=steps))
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps,
                         precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.fit(model, torch.utils.data.DataLoader(_batches(steps, args, device), batch_size=None))
    steps_ms = [(b - a) * 1e3 for a, b in zip(timer.starts[args.warmup:], timer.starts[args.warmup + 1:])]
    if profile is not None:
        gpu_ms, top = profile.summary()
        print(f"{variant} / {compile_mode}: GPU kernels {gpu_ms:.2f} ms per step, the most:\n{top}", flush=True)
    return {
        "variant": variant, "compile": compile_mode, "step_ms": statistics.median(steps_ms),
        "warmup_s": timer.starts[args.warmup] - start, "graphs": counters["stats"]["unique_graphs"],
        "skips": counters["inductor"]["cudagraph_skips"], "density": _density(model),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
    }


def _density(model) -> float:
    from psa_train.models import vit as vit_psa

    density = vit_psa.psa_density(model.student)
    return 1.0 if density is None else density


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="videomae-b")
    parser.add_argument("--variants", nargs="+", choices=("dense", "psa"), default=["dense", "psa"])
    parser.add_argument("--compile", nargs="+", default=["none", "reduce-overhead"],
                        choices=("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, CUDA-graph recording)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", action="store_true",
                        help="also trace the timed steps' CUDA kernels (the step times then include the profiler)")
    args = parser.parse_args()
    if args.profile and not args.device.startswith("cuda"):
        parser.error("--profile traces CUDA kernels: it needs --device cuda")
    rows = [run(v, c, args) for c in args.compile for v in args.variants]
    base = {r["compile"]: r["step_ms"] for r in rows if r["variant"] == "dense"}
    print("| variant | compile | density | step ms | vs dense eager | warm-up s | graphs | cudagraph skips | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["step_ms"] / base["none"] if "none" in base else float("nan")
        print(f"| {r['variant']} | {r['compile']} | {r['density']:.3f} | {r['step_ms']:.1f} | {ratio:.2f}x | "
              f"{r['warmup_s']:.0f} | {r['graphs']} | {r['skips']} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
