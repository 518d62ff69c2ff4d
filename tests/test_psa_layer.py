"""PSAAttention: SDPA path at budget 0, forced levels, layouts undone, statistics, gradients."""

import pytest
import torch
import torch.nn.functional as F

import psa_train.attention.layer as layer_mod
from psa_train.attention import PSAAttention, PSAConfig, compute_density, mean_density
from psa_train.kernels import pyramid_attention


def _qkv(L, D=32, B=1, H=2, seed=0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, D, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.fixture
def spy(monkeypatch):
    """Record the levels (and inputs) every pyramid_attention call gets."""
    calls = []

    def recording(q, k, v, levels, **kw):
        calls.append(dict(q=q.detach(), levels=levels, **kw))
        return pyramid_attention(q, k, v, levels, **kw)

    monkeypatch.setattr(layer_mod, "pyramid_attention", recording)
    return calls


def test_budget_zero_is_plain_sdpa(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("sparse machinery called at budget 0")

    monkeypatch.setattr(layer_mod, "pyramid_attention", boom)
    monkeypatch.setattr(layer_mod, "block_scores", boom)
    monkeypatch.setattr(layer_mod, "layout_permutation", boom)
    layer = PSAAttention(PSAConfig(budget=0.0, layout="gilbert"))
    assert layer.last_density is None and layer.last_level_histogram is None
    q, k, v = _qkv(200)
    out = layer(q, k, v, grid=(2, 10, 10))
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert layer.last_density == 1.0
    assert layer.last_level_histogram == {0: 0.0, 1: 1.0, 2: 0.0, 4: 0.0, 8: 0.0}
    layer.budget = 0.5  # and back on the sparse path, which now must call the kernel
    with pytest.raises(AssertionError, match="budget 0"):
        layer(q, k, v)


@pytest.mark.parametrize("L", [128, 300])
def test_forced_level_one_equals_dense(L, spy):
    layer = PSAAttention(PSAConfig(block_m=64, block_n=32))
    layer.force_level = 1
    q, k, v = _qkv(L)
    torch.testing.assert_close(layer(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=1e-10, atol=1e-10)
    assert len(spy) == 1 and (spy[0]["levels"] == 1).all()
    assert layer.last_density == 1.0


def test_forced_level_overrides_budget_zero_and_is_validated(spy):
    layer = PSAAttention(PSAConfig(budget=0.0, block_m=64, block_n=32))
    layer.force_level = 8
    q, k, v = _qkv(128)
    layer(q, k, v)
    assert len(spy) == 1 and (spy[0]["levels"] == 8).all()
    assert layer.last_density == pytest.approx(1 / 8)
    layer.force_level = 3
    with pytest.raises(ValueError, match="force_level"):
        layer(q, k, v)


@pytest.mark.parametrize(
    "config",
    [
        PSAConfig(block_m=64, block_n=32),
        PSAConfig.wan21_1_3b(block_m=64, score_reduction="mean"),
        PSAConfig(block_m=64, block_n=32, similarity_thresholds={2: 0.9, 4: 0.9, 8: 0.9}),
    ],
)
def test_sparse_call_statistics(config, spy):
    layer = PSAAttention(config)
    q, k, v = _qkv(64 * 5 + 7)
    out = layer(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()
    levels = spy[0]["levels"]
    assert spy[0]["backend"] == config.backend and spy[0]["block_n"] == config.block_n
    assert 0.0 < layer.last_density <= 1.0
    assert layer.last_density == pytest.approx(compute_density(levels))
    hist = layer.last_level_histogram
    assert set(hist) == {0, 1, 2, 4, 8} and sum(hist.values()) == pytest.approx(1.0)
    assert hist[1] > 0
    if config.similarity_thresholds[2] is not None:
        # Random keys are not alike: the cap must refuse all pooling.
        assert hist[2] == hist[4] == hist[8] == 0.0


def test_sparse_output_is_pyramid_attention_of_the_selected_levels(spy):
    layer = PSAAttention(PSAConfig(block_m=64, block_n=32))
    q, k, v = _qkv(256)
    out = layer(q, k, v)
    levels = spy[0]["levels"]
    assert (levels != 1).any()  # really sparse
    torch.testing.assert_close(out, pyramid_attention(q, k, v, levels, block_m=64, block_n=32), rtol=0, atol=0)
    dense = F.scaled_dot_product_attention(q, k, v)
    assert not torch.allclose(out, dense, atol=1e-3)


@pytest.mark.parametrize("mode", ["tile", "gilbert"])
@pytest.mark.parametrize("prefix", [0, 3])
def test_layout_is_undone(mode, prefix, spy):
    grid = (2, 6, 10)
    cfg = PSAConfig(block_m=64, block_n=32, layout=mode, tile_size=(1, 4, 4), prefix_tokens=prefix)
    q, k, v = _qkv(prefix + 120)
    layer = PSAAttention(cfg)
    layer.force_level = 1
    out = layer(q, k, v, grid=grid)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-10, atol=1e-10)
    # The kernel saw the reordered tokens (prefix in front), so the test above could fail.
    from psa_train.attention import layout_permutation

    perm, inv = layout_permutation(grid, mode, (1, 4, 4), prefix)
    assert not torch.equal(perm, torch.arange(perm.numel()))
    assert torch.equal(spy[0]["q"], q[:, :, perm])

    # Sparse levels: the output equals pyramid attention in the new order, mapped back.
    layer.force_level = None
    out = layer(q, k, v, grid=grid)
    levels = spy[-1]["levels"]
    ref = pyramid_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], levels, block_m=64, block_n=32)[:, :, inv]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    if prefix:
        assert (levels[:, :, 0, :] == 1).all() and (levels[..., 0] == 1).all()


def test_grid_length_mismatch():
    layer = PSAAttention(PSAConfig(layout="tile", prefix_tokens=1))
    q, k, v = _qkv(120)
    with pytest.raises(ValueError, match="grid"):
        layer(q, k, v, grid=(2, 6, 10))  # needs 1 + 120 tokens


def test_gradients_flow_on_the_sparse_path():
    layer = PSAAttention(PSAConfig(block_m=64, block_n=32))
    q, k, v = _qkv(64 * 3 + 5, grad=True)
    out = layer(q, k, v)
    assert 0.0 < layer.last_density < 1.0
    (out * torch.randn_like(out)).sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_sm_scale_is_passed_through(spy):
    q, k, v = _qkv(128)
    layer = PSAAttention(PSAConfig(block_m=64, block_n=32))
    layer.force_level = 1
    torch.testing.assert_close(layer(q, k, v, sm_scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3))
    layer.force_level, layer.budget = None, 0.0
    torch.testing.assert_close(layer(q, k, v, sm_scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_budget_property_and_config_copy():
    cfg = PSAConfig()
    layer = PSAAttention(cfg)
    layer.budget = 0.25
    assert layer.config.budget == 0.25 and cfg.budget == 1.0  # the layer owns a copy
    with pytest.raises(ValueError, match="budget"):
        layer.budget = 1.5
    assert layer.budget == 0.25
    assert "budget=0.25" in repr(layer)


def test_checkpointed_recompute_reuses_the_levels_of_its_forward(monkeypatch):
    """Activation checkpointing re-runs the layer in backward: no second scoring, same gradients."""
    import psa_train.attention.layer as layer_module
    from torch.utils.checkpoint import checkpoint

    calls = []
    real_scores = layer_module.block_scores
    monkeypatch.setattr(layer_module, "block_scores", lambda *a, **k: calls.append(1) or real_scores(*a, **k))
    config = PSAConfig(block_m=64, block_n=32, band_mode="quota", bands={1: 0.25, 2: 0.25, 4: 0.0, 8: 0.25})
    layer = PSAAttention(config)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 16, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))

    plain = layer(q, k, v)
    plain.sum().backward()
    plain_grads = [t.grad.clone() for t in (q, k, v)]
    assert len(calls) == 1
    for t in (q, k, v):
        t.grad = None

    calls.clear()
    out = checkpoint(layer, q, k, v, use_reentrant=False)
    out.sum().backward()
    assert len(calls) == 1  # the forward scored; its recomputation in backward did not
    torch.testing.assert_close(out, plain)
    for t, expected in zip((q, k, v), plain_grads):
        torch.testing.assert_close(t.grad, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["default_quota", "wan21_1_3b"])
def test_sparse_layer_never_waits_on_the_gpu(preset):
    """Scoring, assignment, lists and kernels stay on the device: a host sync inside a layer would
    stall the launch queue of every training step (sync debug mode turns one into an error)."""
    layer = PSAAttention(getattr(PSAConfig, preset)())
    grid = (4, 16, 32)
    q, k, v = (torch.randn(1, 12, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    layer(q, k, v, grid=grid).sum().backward()  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(q, k, v, grid=grid).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_mean_density_is_a_tensor_read_without_a_host_copy(monkeypatch):
    """What the training steps log: the layers' mean density as a tensor, computed where the
    statistics are (no `.tolist()` / `.item()`, each a GPU sync mid-step); layers that have not run
    are left out, a dense call (CPU counts) mixes in."""
    cfg = PSAConfig(block_m=64, block_n=32, bands={1: 0.25, 8: 0.25})
    sparse, dense, idle = PSAAttention(cfg), PSAAttention(PSAConfig(budget=0.0)), PSAAttention(cfg)
    assert mean_density([idle]) is None
    sparse(*_qkv(256, dtype=torch.float32))
    dense(*_qkv(64, dtype=torch.float32))
    expected = (sparse.last_density + dense.last_density) / 2
    for name in ("tolist", "item", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("read on the host"))
    value = mean_density([sparse, dense, idle])
    monkeypatch.undo()
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert value.item() == pytest.approx(expected) and expected < 1.0
