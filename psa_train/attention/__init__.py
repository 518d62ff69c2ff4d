"""PSA attention core: config, token layout, block scoring, level assignment and the layer."""

from .config import PSAConfig, check_budget
from .layer import PSAAttention, mean_density
from .layout import TokenLayout, gilbert_order, layout_permutation, tile_order
from .levels import (
    LEVEL_VALUES,
    apply_similarity_cap,
    assign_levels,
    compute_density,
    key_similarity,
    level_histogram,
    quota_counts,
)
from .scoring import block_scores, sample_positions

__all__ = [
    "LEVEL_VALUES",
    "PSAAttention",
    "PSAConfig",
    "TokenLayout",
    "apply_similarity_cap",
    "assign_levels",
    "block_scores",
    "check_budget",
    "compute_density",
    "gilbert_order",
    "key_similarity",
    "layout_permutation",
    "level_histogram",
    "mean_density",
    "quota_counts",
    "sample_positions",
    "tile_order",
]
