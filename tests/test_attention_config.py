"""PSAConfig: validation, dict/YAML round trips, budget boundaries, presets."""

import pytest
import torch
import yaml

from psa_train.attention import PSAConfig, assign_levels, compute_density


@pytest.mark.parametrize(
    "field, value",
    [
        ("block_m", 96),
        ("block_n", 16),
        ("block_m", True),
        ("band_mode", "topk"),
        ("score_reduction", "sum"),
        ("layout", "hilbert"),
        ("backend", "cuda"),
        ("sample_fraction", 0.0),
        ("sample_fraction", 1.5),
        ("budget", -0.1),
        ("budget", 1.01),
        ("budget", float("nan")),
        ("tile_size", (2, 8)),
        ("tile_size", (2, 0, 8)),
        ("prefix_tokens", -1),
        ("prefix_tokens", 1.0),
        ("bands", {3: 0.1}),
        ("bands", {1: 0.7, 2: 0.5}),  # quota fractions sum > 1
        ("bands", {1: -0.1}),
        ("bands", [0.1, 0.2]),
        ("similarity_thresholds", {3: 0.5}),
        ("similarity_thresholds", {2: 1.5}),
        ("similarity_thresholds", 0.5),
    ],
)
def test_invalid_field_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        PSAConfig(**{field: value})


@pytest.mark.parametrize(
    "bands",
    [{1: 0.0}, {1: 0.5, 2: 0.4}, {1: 0.5, 8: 1.2}, {2: 0.5}],  # zero, decreasing, > 1, no level 1
)
def test_invalid_threshold_bands(bands):
    with pytest.raises(ValueError, match="bands"):
        PSAConfig(band_mode="threshold", bands=bands)


def test_missing_levels_get_empty_bands():
    quota = PSAConfig(bands={1: 0.2})
    assert quota.bands == {1: 0.2, 2: 0.0, 4: 0.0, 8: 0.0}
    thr = PSAConfig(band_mode="threshold", bands={1: 0.5, 4: 0.9})
    assert thr.bands == {1: 0.5, 2: 0.5, 4: 0.9, 8: 0.9}


def test_default_is_the_default_quota():
    assert PSAConfig() == PSAConfig.default_quota()
    assert PSAConfig().bands == {1: 0.10, 2: 0.05, 4: 0.0, 8: 0.20}


def _configs():
    return [
        PSAConfig(),
        PSAConfig.wan21_1_3b(),
        PSAConfig(
            block_m=64,
            block_n=128,
            band_mode="threshold",
            bands={1: 0.3, 2: 0.5, 4: 0.5, 8: 1.0},
            similarity_thresholds={2: 0.7, 4: None, 8: -0.25},
            sample_fraction=0.5,
            score_reduction="mean",
            layout="none",
            tile_size=(1, 4, 16),
            budget=0.25,
            prefix_tokens=5,
            backend="reference",
        ),
    ]


@pytest.mark.parametrize("config", _configs())
def test_dict_and_yaml_round_trip(config):
    d = config.to_dict()
    assert PSAConfig.from_dict(d) == config
    text = yaml.safe_dump(d)
    assert PSAConfig.from_dict(yaml.safe_load(text)) == config


def test_from_dict_accepts_string_level_keys():
    d = PSAConfig().to_dict()
    d["bands"] = {"1": 0.2, "8": 0.3}
    d["similarity_thresholds"] = {"4": 0.5}
    c = PSAConfig.from_dict(d)
    assert c.bands == {1: 0.2, 2: 0.0, 4: 0.0, 8: 0.3}
    assert c.similarity_thresholds == {2: None, 4: 0.5, 8: None}


def test_unknown_keys_are_named():
    d = PSAConfig().to_dict()
    d["sparsity"] = 0.9
    d["blockm"] = 64
    with pytest.raises(ValueError, match=r"blockm.*sparsity"):
        PSAConfig.from_dict(d)


def test_boundaries_move_linearly_with_budget():
    c = PSAConfig.default_quota()
    assert c.boundaries(1.0) == pytest.approx({1: 0.10, 2: 0.15, 4: 0.15, 8: 0.35})
    assert c.boundaries(0.5) == pytest.approx({1: 0.55, 2: 0.575, 4: 0.575, 8: 0.675})
    assert c.boundaries(0.0) == {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}
    t = PSAConfig.wan21_1_3b()
    assert t.boundaries(0.5) == pytest.approx({1: 0.8, 2: 0.85, 4: 0.85, 8: 0.9})
    with pytest.raises(ValueError, match="budget"):
        c.boundaries(2.0)


def test_quota_density_claim():
    c = PSAConfig.default_quota()
    assert c.quota_density() == pytest.approx(0.15)
    assert c.quota_density(0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="band_mode"):
        PSAConfig.wan21_1_3b().quota_density()


def test_default_quota_density_on_random_scores():
    scores = torch.rand(1, 2, 32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = assign_levels(scores, PSAConfig.default_quota())
    assert compute_density(levels) == pytest.approx(0.15, abs=0.005)
    assert compute_density(assign_levels(scores, PSAConfig.default_quota(budget=0.0))) == 1.0


def test_wan_preset_on_uniform_scores():
    c = PSAConfig.wan21_1_3b()
    assert (c.band_mode, c.layout, c.block_m, c.block_n) == ("threshold", "gilbert", 128, 32)
    assert c.bands == {1: 0.6, 2: 0.7, 4: 0.7, 8: 0.8}
    # Uniform mass over 64 blocks: the mass before rank r is r/64, so ranks 0..38 are level 1,
    # 39..44 level 2, none level 4, 45..51 level 8 and 52..63 skipped.
    levels = assign_levels(torch.ones(1, 1, 4, 64), c)
    expected = (39 + 6 / 2 + 7 / 8) / 64
    assert compute_density(levels) == pytest.approx(expected)


def test_replace_validates():
    c = PSAConfig()
    assert c.replace(budget=0.5).budget == 0.5
    with pytest.raises(ValueError, match="layout"):
        c.replace(layout="zigzag")
