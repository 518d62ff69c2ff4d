"""The launch-configuration table: lookups, benchmark overrides, and the --set parser."""

from __future__ import annotations

import pytest
import torch

from psa_train.kernels import tuning


def test_measured_keys_fall_back_and_fp16_shares_bf16():
    assert tuning.get_config(64, 128, 64, torch.float16) == tuning.MEASURED[(64, 128, 64, "bfloat16")]
    assert tuning.get_config(64, 64, 32, torch.bfloat16) == tuning.default_config(64, 64, 32, torch.bfloat16)
    fp32 = tuning.get_config(128, 128, 64, torch.float32)
    assert not fp32.fwd_tma and fp32.fwd_tiles == (32, 32, 32, 32)


def test_changes_apply_on_top_of_each_keys_entry(monkeypatch):
    monkeypatch.setattr(tuning, "CHANGES", tuning.parse_overrides(["fwd_clean_levels=(1,)", "dq_stages=3"]))
    for key in ((128, 128, 64), (64, 128, 64), (64, 64, 32)):
        cfg = tuning.get_config(*key, torch.bfloat16)
        assert cfg.fwd_clean_levels == (1,) and cfg.dq_stages == 3
    assert tuning.get_config(64, 128, 64, torch.bfloat16).dkdv_msub == 128  # the entry's own field stays


@pytest.mark.parametrize("bad", ["fwd_warps", "no_such_field=1", "fwd_tiles=(64, 32"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(SystemExit, match="--set"):
        tuning.parse_overrides([bad])
