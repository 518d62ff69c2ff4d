"""`PSAConfig`: every knob of the PSA layer in one validated, YAML-friendly dataclass.

Recipes are the user interface, so the config must survive a round trip through a plain dict
and YAML, and a typo must fail loudly (a `ValueError` naming the field) instead of silently
running a different sparsity pattern.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

LEVELS = (1, 2, 4, 8)
POOLED_LEVELS = (2, 4, 8)
BLOCK_M_VALUES = (64, 128)
BLOCK_N_VALUES = (32, 64, 128)
BAND_MODES = ("quota", "threshold")
SCORE_REDUCTIONS = ("max", "mean")
LAYOUTS = ("none", "tile", "gilbert")
BACKENDS = ("auto", "triton", "reference")

# A boundary this close to 1 means "all remaining blocks" (guards float error at budget ~ 0).
BOUNDARY_ONE = 1.0 - 1e-9


def _default_quota_bands() -> dict[int, float]:
    return {1: 0.10, 2: 0.05, 4: 0.0, 8: 0.20}


def _default_similarity() -> dict[int, float | None]:
    return {2: None, 4: None, 8: None}


def _level_key(name: str, key: Any, allowed: tuple[int, ...]) -> int:
    """Accept 1, "1" (JSON/CLI) for a level key; reject anything else."""
    try:
        level = int(key)
    except (TypeError, ValueError):
        level = None
    if isinstance(key, bool) or level not in allowed or (isinstance(key, float) and key != level):
        raise ValueError(f"{name} keys must be levels in {allowed}, got {key!r}")
    return level


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass
class PSAConfig:
    """Configuration of a Pyramid Sparse Attention layer (semantics: DESIGN.md §1).

    Fields:
      block_m, block_n: query / key block sizes (64|128 and 32|64|128).
      band_mode: "quota" (fixed fractions of key blocks per level) or "threshold" (bands cut on
        the cumulative normalised score mass of the sorted key blocks).
      bands: {level: value} for levels 1, 2, 4, 8. quota: the fraction of a row's key blocks at
        that level (sum <= 1, the rest is skipped). threshold: the cumulative mass at which that
        level's band ends (non-decreasing in level order, each in (0, 1]; mass beyond the last
        boundary is skipped). A missing level gets an empty band.
      similarity_thresholds: {2|4|8: cosine or None}; a block may be pooled s-fold only if its
        keys' similarity at stride s (see `key_similarity`) reaches the threshold. None = no cap.
      sample_fraction: share of tokens per block sampled for block scoring, in (0, 1].
      score_reduction: how the sampled queries of a query block are reduced ("max" | "mean").
      layout: token order for video grids ("none" | "tile" | "gilbert").
      tile_size: (T, H, W) tile of the "tile" layout. The default 2x8x8 = 128 tokens is exactly
        one query block of 128 and two key blocks of 64 (four of 32), so blocks are 3-D boxes.
      budget: 0 = dense (SDPA), 1 = the target bands; in between every band boundary moves
        linearly toward 1.0. Annealed by callbacks during training.
      prefix_tokens: tokens in front of the grid (class tokens, registers); their blocks are
        always level 1, both as queries and as keys.
      backend: passed to `pyramid_attention` ("auto" | "triton" | "reference").
    """

    block_m: int = 128
    block_n: int = 64
    band_mode: str = "quota"
    bands: dict[int, float] = field(default_factory=_default_quota_bands)
    similarity_thresholds: dict[int, float | None] = field(default_factory=_default_similarity)
    sample_fraction: float = 0.25
    score_reduction: str = "max"
    layout: str = "tile"
    tile_size: tuple[int, int, int] = (2, 8, 8)
    budget: float = 1.0
    prefix_tokens: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        _choice("block_m", self.block_m, BLOCK_M_VALUES)
        _choice("block_n", self.block_n, BLOCK_N_VALUES)
        _choice("band_mode", self.band_mode, BAND_MODES)
        _choice("score_reduction", self.score_reduction, SCORE_REDUCTIONS)
        _choice("layout", self.layout, LAYOUTS)
        _choice("backend", self.backend, BACKENDS)
        self.bands = self._checked_bands(self.bands)
        self.similarity_thresholds = self._checked_similarity(self.similarity_thresholds)

        self.sample_fraction = _number("sample_fraction", self.sample_fraction)
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        self.budget = check_budget(self.budget)

        tile = self.tile_size
        if (
            not isinstance(tile, (tuple, list))
            or len(tile) != 3
            or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tile)
        ):
            raise ValueError(f"tile_size must be three positive ints (T, H, W), got {tile!r}")
        self.tile_size = tuple(tile)

        p = self.prefix_tokens
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"prefix_tokens must be an int >= 0, got {p!r}")

    def _checked_bands(self, bands: Any) -> dict[int, float]:
        if not isinstance(bands, Mapping):
            raise ValueError(f"bands must be a mapping {{level: value}} for levels {LEVELS}, got {bands!r}")
        given = {_level_key("bands", k, LEVELS): _number(f"bands[{k}]", v) for k, v in bands.items()}
        if self.band_mode == "quota":
            out = {s: given.get(s, 0.0) for s in LEVELS}
            for s, v in out.items():
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"bands[{s}] (quota fraction) must be in [0, 1], got {v}")
            if sum(out.values()) > 1.0 + 1e-9:
                raise ValueError(f"bands (quota fractions) must sum to <= 1, got {sum(out.values())}")
            return out
        if 1 not in given:
            raise ValueError("bands[1] is required in threshold mode (the level-1 boundary)")
        out, prev = {}, 0.0
        for s in LEVELS:
            v = given.get(s, prev)  # missing level: empty band
            if not 0.0 < v <= 1.0:
                raise ValueError(f"bands[{s}] (threshold boundary) must be in (0, 1], got {v}")
            if v < prev:
                raise ValueError(f"bands (threshold boundaries) must be non-decreasing in levels {LEVELS}, "
                                 f"got bands[{s}]={v} < {prev}")
            out[s] = prev = v
        return out

    @staticmethod
    def _checked_similarity(sim: Any) -> dict[int, float | None]:
        if sim is None:
            return _default_similarity()
        if not isinstance(sim, Mapping):
            raise ValueError(f"similarity_thresholds must be a mapping {{2|4|8: float or None}}, got {sim!r}")
        out = _default_similarity()
        for k, v in sim.items():
            s = _level_key("similarity_thresholds", k, POOLED_LEVELS)
            if v is not None:
                v = _number(f"similarity_thresholds[{s}]", v)
                if not -1.0 <= v <= 1.0:
                    raise ValueError(f"similarity_thresholds[{s}] must be a cosine in [-1, 1] or None, got {v}")
            out[s] = v
        return out

    # -- band boundaries ------------------------------------------------------------------
    def boundaries(self, budget: float | None = None) -> dict[int, float]:
        """Cumulative band boundaries b_s per level after budget interpolation.

        quota: the cumulative fraction of blocks through level s; threshold: the cumulative mass
        at which level s ends. b_s(budget) = 1 - budget * (1 - b_s), so budget 0 gives 1.0
        everywhere (all level 1) and budget 1 the configured bands.
        """
        budget = self.budget if budget is None else check_budget(budget)
        return {s: 1.0 - budget * (1.0 - b) for s, b in self.target_boundaries().items()}

    def target_boundaries(self) -> dict[int, float]:
        """The cumulative boundaries b_s at budget 1 (the configured bands), before interpolation."""
        if self.band_mode == "threshold":
            return dict(self.bands)
        cum, acc = {}, 0.0
        for s in LEVELS:
            acc += self.bands[s]
            cum[s] = min(acc, 1.0)
        return cum

    def quota_density(self, budget: float | None = None) -> float:
        """Nominal compute density of quota bands (ignoring rounding and the top-block rule)."""
        if self.band_mode != "quota":
            raise ValueError("quota_density needs band_mode='quota' (threshold density depends on the scores)")
        b, prev, density = self.boundaries(budget), 0.0, 0.0
        for s in LEVELS:
            density += (b[s] - prev) / s
            prev = b[s]
        return density

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, strs, lists, None) that `yaml.safe_dump` accepts."""
        d = dataclasses.asdict(self)
        d["bands"] = {int(k): float(v) for k, v in self.bands.items()}
        d["similarity_thresholds"] = dict(self.similarity_thresholds)
        d["tile_size"] = list(self.tile_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PSAConfig":
        """Inverse of `to_dict`; unknown keys raise a `ValueError` naming them."""
        if not isinstance(d, Mapping):
            raise ValueError(f"PSAConfig.from_dict needs a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in names)
        if unknown:
            raise ValueError(f"unknown PSAConfig keys {unknown}; accepted keys are {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("tile_size"), list):
            d["tile_size"] = tuple(d["tile_size"])
        return cls(**d)

    def replace(self, **changes: Any) -> "PSAConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # -- presets --------------------------------------------------------------------------
    @classmethod
    def default_quota(cls, **overrides: Any) -> "PSAConfig":
        """Quota bands 10 % level 1, 5 % level 2, 0 % level 4, 20 % level 8, 65 % skipped.

        Nominal density 0.10 + 0.05/2 + 0.20/8 = 0.15. These are the `topk` mask ratios the
        public PSA release uses for CogVideoX (configs/attention_config.yaml).
        """
        base = dict(band_mode="quota", bands=_default_quota_bands(), layout="tile")
        return cls(**{**base, **overrides})

    @classmethod
    def wan21_1_3b(cls, **overrides: Any) -> "PSAConfig":
        """The PSA paper's Wan2.1-T2V-1.3B setting ("PSA: Pyramid Sparse Attention", 2025).

        Numbers from the authors' public release (github.com/xiaolong-li1/Pyramid-Sparse-Attention,
        configs/attention_config.yaml, `Wan2.1_1.3b: psa_balanced`): mask_mode thresholdbound with
        cumulative-mass bands ending at 0.60 (level 1), 0.70 (level 2), 0.70 (level 4, i.e. an
        empty band), 0.80 (level 8), the rest skipped; blocks 128 x 32; Gilbert rearrangement;
        similarity mask off (their thresholds, if switched on: 0.7 / 0.65 / 0.6 for 2x/4x/8x).
        Our threshold rule (mass *before* a block vs the boundary) matches theirs up to one block
        per band edge; they also force a minimum level-1 share, which we do not.
        """
        base = dict(
            block_m=128,
            block_n=32,
            band_mode="threshold",
            bands={1: 0.60, 2: 0.70, 4: 0.70, 8: 0.80},
            layout="gilbert",
            tile_size=(2, 8, 8),
        )
        return cls(**{**base, **overrides})


def check_budget(budget: Any) -> float:
    """Validate a sparsity budget (a number in [0, 1]) and return it as a float."""
    b = _number("budget", budget)
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"budget must be in [0, 1], got {b}")
    return b
