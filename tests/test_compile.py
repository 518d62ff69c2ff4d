"""`torch.compile` over the Triton path: one graph (no break), and the same numbers as eager.

Under the compiler, attention, block scoring and level assignment run as custom operators
(kernels/compiled_ops.py). CPU tensors run the kernels in the Triton interpreter, so shapes are
tiny; the CPU runs force the Triton scoring and assignment that CUDA tensors take by default.
The GPU test adds CUDA graphs (`mode="reduce-overhead"`), where the launches are replayed.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch._dynamo.utils import counters

pytest.importorskip("triton")

import psa_train.attention.layer as layer_module  # noqa: E402
from psa_train.attention import PSAAttention, PSAConfig, assign_levels, block_scores  # noqa: E402
from psa_train.attention.layout import _cached_on  # noqa: E402
from psa_train.attention.scoring import _sample_tables  # noqa: E402
from psa_train.kernels import pyramid_attention  # noqa: E402


def _qkv(shape, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device).manual_seed(seed)
    return [torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def _run(fn, q, k, v, **kw):
    """Output and (dq, dk, dv) of fn(q, k, v).sum()."""
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v, **kw)
    out.float().pow(2).sum().backward()
    return out.detach().clone(), [t.grad.clone() for t in (q, k, v)]


def _assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def triton_selection(monkeypatch):
    """Make the layer score and assign with the Triton kernels, as it does for CUDA tensors."""
    monkeypatch.setattr(layer_module, "block_scores", functools.partial(block_scores, backend="triton"))
    monkeypatch.setattr(layer_module, "assign_levels", functools.partial(assign_levels, backend="triton"))


def test_scoring_assignment_and_attention_compile_to_one_graph():
    config = PSAConfig(block_m=64, block_n=32, budget=1.0)

    def sparse_attention(q, k, v):
        scores = block_scores(q.detach(), k.detach(), 64, 32, backend="triton")
        levels = assign_levels(scores, config, backend="triton")
        return pyramid_attention(q, k, v, levels, 64, 32, backend="triton")

    q, k, v = _qkv((1, 2, 200, 64))  # tail blocks on both axes
    expected = _run(sparse_attention, q, k, v)
    compiled = torch.compile(sparse_attention, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, q, k, v), expected)


@pytest.mark.parametrize("mode", ["quota", "threshold"])
def test_layer_compiles_without_graph_breaks(mode, triton_selection):
    config = PSAConfig.default_quota() if mode == "quota" else PSAConfig.wan21_1_3b()
    layer = PSAAttention(dataclasses.replace(config, block_m=64, block_n=32, budget=1.0, backend="triton"))
    q, k, v = _qkv((1, 2, 256, 64))
    grid = (4, 8, 8)
    explained = torch._dynamo.explain(layer)(q, k, v, grid=grid)
    assert explained.graph_break_count == 0, explained.break_reasons
    expected = _run(layer, q, k, v, grid=grid)
    expected_density = layer.last_density
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, q, k, v, grid=grid), expected)
    assert layer.last_density == expected_density < 1.0


def test_a_changed_budget_or_grid_is_not_served_from_the_old_graph(triton_selection):
    """A new budget or grid must never reuse the old levels or permutation. The grid's token order
    is a constant of a compiled graph: with `dynamic=False` each grid gets its own graph; by
    default a second grid makes the grid's ints dynamic, and the permutation then runs outside the
    graph (a graph break, so no fullgraph)."""
    layer = PSAAttention(PSAConfig(block_m=64, block_n=32, budget=1.0, backend="triton"))
    q, k, v = (t.detach() for t in _qkv((1, 2, 256, 64)))
    densities, outputs = [], []
    for options, runs in (({"fullgraph": True, "dynamic": False},
                           [(1.0, (4, 8, 8)), (0.4, (4, 8, 8)), (0.0, (4, 8, 8)), (1.0, (1, 16, 16)), (1.0, (4, 8, 8))]),
                          ({"fullgraph": False}, [(1.0, (4, 8, 8)), (1.0, (1, 16, 16)), (1.0, (4, 8, 8))])):
        torch._dynamo.reset()
        compiled = torch.compile(layer, backend="aot_eager", **options)
        for budget, grid in runs:
            layer.budget = budget
            with torch.no_grad():
                expected = layer(q, k, v, grid=grid)
                eager_density = layer.last_density
                got = compiled(q, k, v, grid=grid)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            assert layer.last_density == eager_density
            densities.append(eager_density)
            outputs.append(got)
    torch._dynamo.reset()
    assert densities[0] < densities[1] < densities[2] == 1.0 and densities[4] == densities[0]
    assert not torch.equal(outputs[3], outputs[0])  # another token order: other blocks kept


@pytest.mark.parametrize("preset", ["default_quota", "wan21_1_3b"])
def test_an_annealed_budget_does_not_compile_again(preset, triton_selection):
    """The annealing callback moves the budget every step. The assignment kernel reads it from the
    layer's buffer and the compiled layer reads no Python copy of it, so every budget runs in one
    of two graphs (budget 0: dense SDPA; any other), with `dynamic=False` too."""
    torch._dynamo.reset()
    counters.clear()
    layer = PSAAttention(dataclasses.replace(getattr(PSAConfig, preset)(), block_m=64, block_n=32, backend="triton"))
    q, k, v = (t.detach() for t in _qkv((1, 2, 256, 64)))
    grid = (4, 8, 8)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager", dynamic=False)
    densities = []
    for budget in (0.0, 0.25, 0.5, 1.0, 0.75):
        layer.budget = budget
        with torch.no_grad():
            expected = layer(q, k, v, grid=grid)
            densities.append(layer.last_density)
            got = compiled(q, k, v, grid=grid)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert layer.last_density == densities[-1]
    assert densities[0] == 1.0 > densities[1] > densities[2] > densities[3] < densities[4]
    assert counters["stats"]["unique_graphs"] == 2  # budget 0 (dense SDPA) and the sparse layer
    torch._dynamo.reset()


def test_patched_backbones_compile_to_one_graph(triton_selection):
    """diffusers' Wan transformer and an HF VideoMAE with PSA installed, as users compile them."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from psa_train.models import enable_psa
    from psa_train.models.wan import load_wan_transformer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    config = PSAConfig(block_m=64, block_n=32, layout="tile", tile_size=(1, 4, 4), backend="triton", budget=1.0)
    wan = load_wan_transformer("tiny").eval()
    enable_psa(wan, config)
    wan_inputs = (torch.randn(2, 16, 5, 8, 8, generator=g), torch.tensor([900.0, 150.0]), torch.randn(2, 32, 32, generator=g))
    videomae = VideoMAEForVideoClassification(VideoMAEConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, image_size=(40, 56),
        patch_size=8, num_frames=6, tubelet_size=2, num_labels=5, attn_implementation="sdpa")).eval()
    enable_psa(videomae, config)
    clips = torch.randn(2, 6, 3, 40, 56, generator=g)
    for call in (lambda: wan(*wan_inputs, return_dict=False)[0], lambda: videomae(clips).logits):
        with torch.no_grad():
            expected = call()
            explained = torch._dynamo.explain(call)()
            assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
            got = torch.compile(call, fullgraph=True, backend="aot_eager")()
        torch.testing.assert_close(got, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["default_quota", "wan21_1_3b"])
def test_layer_under_cuda_graphs_matches_eager(preset):
    """mode="reduce-overhead": the layer's launches recorded once and replayed. The compiled layer
    runs first, with the sample-table and layout caches empty: a device tensor that a custom
    operator caches while a CUDA graph is recorded would sit in the graph's private memory."""
    _sample_tables.cache_clear()
    _cached_on.cache_clear()
    layer = PSAAttention(getattr(PSAConfig, preset)())
    q, k, v = _qkv((2, 12, 1568, 64), device="cuda", dtype=torch.bfloat16)
    grid = (8, 14, 14)
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        got = _run(compiled, q, k, v, grid=grid)
    expected = _run(layer, q, k, v, grid=grid)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    # the pooled gradients are summed by atomics (kernels/gluon_pooled_dq.py), in no fixed order:
    # two eager backwards differ in the last bits too
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_annealed_budget_under_cuda_graphs():
    """mode="reduce-overhead" while the budget moves every step: the recorded assignment reads the
    budget from memory at each replay, so levels follow the budget with no re-recording, no skip of
    the CUDA graphs and no stale value."""
    torch._dynamo.reset()
    counters.clear()
    layer = PSAAttention(PSAConfig.default_quota())
    q, k, v = _qkv((2, 12, 1568, 64), device="cuda", dtype=torch.bfloat16)
    grid = (8, 14, 14)
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    densities = []
    for budget in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.5):
        layer.budget = budget
        for _ in range(2):  # a budget's first run (recording, at the first ones), then a replay
            torch.compiler.cudagraph_mark_step_begin()
            got = _run(compiled, q, k, v, grid=grid)
            density = layer.last_density
        expected = _run(layer, q, k, v, grid=grid)
        assert density == layer.last_density
        densities.append(density)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
        for a, b in zip(got[1], expected[1]):  # pooled gradients: atomics, see above
            torch.testing.assert_close(a, b)
    assert densities[0] == 1.0 and all(a > b for a, b in zip(densities[:6], densities[1:6]))
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert counters["stats"]["unique_graphs"] == 2  # budget 0 (dense SDPA) and the sparse layer
    torch._dynamo.reset()


@pytest.mark.parametrize("preset", ["default_quota", "wan21_1_3b"])
def test_an_annealed_budget_on_the_torch_path_does_not_compile_again(preset):
    """The torch assignment path (CPU tensors here) reads the budget from the layer's buffer under
    the compiler too: its checks break the graph, but no budget after the first compiles again."""
    torch._dynamo.reset()
    counters.clear()
    layer = PSAAttention(dataclasses.replace(getattr(PSAConfig, preset)(), block_m=64, block_n=32))
    q, k, v = (t.detach() for t in _qkv((1, 2, 256, 64)))
    compiled = torch.compile(layer, backend="aot_eager", dynamic=False)
    graphs = []
    for budget in (0.25, 0.5, 1.0, 0.75, 0.6):
        layer.budget = budget
        with torch.no_grad():
            expected = layer(q, k, v, grid=(4, 8, 8))
            density = layer.last_density
            got = compiled(q, k, v, grid=(4, 8, 8))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert layer.last_density == density < 1.0
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == graphs[:1] * 5, graphs
    torch._dynamo.reset()


def test_band_edges_from_the_budget_bits_equal_the_host_ones():
    """The torch path's compiled band edges round as `PSAConfig.boundaries` and `quota_counts` do."""
    from psa_train.attention.levels import _boundaries_from_bits, _quota_counts_tensor, quota_counts

    for config in (PSAConfig.default_quota(), PSAConfig.wan21_1_3b(), PSAConfig(bands={1: 0.1, 2: 0.1, 4: 0.3, 8: 0.5})):
        for budget in [i / 64 for i in range(65)] + [0.3, 0.7, 1e-12]:
            bits = torch.tensor(budget, dtype=torch.float64).view(torch.int64)
            bounds = _boundaries_from_bits(config, bits)
            assert bounds.tolist() == list(config.boundaries(budget).values()), (config, budget)
            for nk in (1, 7, 10, 33, 512, 1000):
                assert _quota_counts_tensor(nk, bounds).tolist() == quota_counts(nk, config, budget), (nk, budget)
