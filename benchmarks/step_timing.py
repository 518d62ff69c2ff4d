"""Timing helpers shared by the training-step benchmarks: pinned SDPA backends, synchronised
wall-clock medians, peak memory."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch


def sdpa_context(variant: str, device: torch.device):
    """SDPA pinned to the backend a dense variant names ("dense-cudnn", "dense-flash")."""
    if device.type != "cuda" or not variant.startswith("dense"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = SDPBackend.CUDNN_ATTENTION if variant == "dense-cudnn" else SDPBackend.FLASH_ATTENTION
    return sdpa_kernel([backend])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def median_time(fn, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of `fn` over `steps` synchronised runs after `warmup`, and peak GiB."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_gib(device)
