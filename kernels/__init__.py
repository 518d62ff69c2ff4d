"""Pyramid attention kernels: Triton for CUDA tensors, a PyTorch reference for CPU ones."""

from .api import LEVEL_VALUES, pyramid_attention
from .reference import mean_pool, reference_pyramid_attention

__all__ = ["LEVEL_VALUES", "mean_pool", "pyramid_attention", "reference_pyramid_attention"]
