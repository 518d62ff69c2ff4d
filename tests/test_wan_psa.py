"""PSA inside diffusers' WanTransformer3DModel: exactness, gradients, dense path, restore."""

import copy

import pytest
import torch
import torch.nn.functional as F

from psa_train.attention import PSAAttention, PSAConfig
from psa_train.models import disable_psa, enable_psa
from psa_train.models.wan import (
    TINY_WAN_CONFIG,
    WanPSAProcessor,
    load_wan_transformer,
    psa_density,
    psa_disabled,
    psa_layers,
    set_psa_budget,
)

CFG = PSAConfig(block_m=64, block_n=32, layout="tile", tile_size=(1, 4, 4))


def _inputs(frames=5, size=8, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, size, size, generator=g)
    t = torch.tensor([900.0, 150.0])[:batch]
    text = torch.randn(batch, 32, 32, generator=g)
    return x, t, text


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return load_wan_transformer("tiny").eval()


def test_loading_named_and_dict_configs():
    m = load_wan_transformer(dict(TINY_WAN_CONFIG, num_layers=1))
    assert len(m.blocks) == 1 and m.config.text_dim == 32
    with pytest.raises(ValueError, match="num_layerz"):
        load_wan_transformer({"num_layerz": 2})
    with pytest.raises(ValueError, match="torch_dtype"):
        load_wan_transformer("tiny", torch_dtype="float8")


def test_load_from_saved_folder(tmp_path, model):
    model.save_pretrained(tmp_path / "transformer")
    again = load_wan_transformer(str(tmp_path))  # a pipeline-style folder with transformer/
    x, t, text = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, text).sample, model(x, t, text).sample, rtol=0, atol=0)


def test_force_level_1_equals_dense_in_fp32(model):
    x, t, text = _inputs()
    with torch.no_grad():
        dense = model(x, t, text).sample
    keys = set(model.state_dict())
    processors = enable_psa(model, CFG)
    assert len(processors) == len(model.blocks)
    assert all(isinstance(b.attn1.processor, WanPSAProcessor) for b in model.blocks)
    assert not any(isinstance(b.attn2.processor, WanPSAProcessor) for b in model.blocks)  # cross-attn untouched
    assert set(model.state_dict()) == keys  # patching adds no weights: diffusers can load them
    for layer in psa_layers(model):
        layer.force_level = 1
    with torch.no_grad():
        patched = model(x, t, text).sample
    torch.testing.assert_close(patched, dense, rtol=1e-5, atol=1e-5)
    # ... and the patched path really ran pyramid attention on the 5 x 4 x 4 grid
    assert all(p.grid == (5, 4, 4) for p in processors)
    assert psa_density(model) == pytest.approx(1.0)


def test_sparse_levels_change_the_output_and_report_density(model):
    x, t, text = _inputs()
    with torch.no_grad():
        dense = model(x, t, text).sample
    enable_psa(model, CFG.replace(bands={1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0}))
    with torch.no_grad():
        sparse = model(x, t, text).sample
    density = psa_density(model)
    assert density is not None and density < 0.5  # 3 key blocks, only the top one kept
    assert (sparse - dense).abs().max() > 1e-4


def test_matches_a_hand_written_wan_self_attention(model):
    """The processor reproduces WanAttnProcessor's math (projections, norms, rope, out proj)."""
    x, t, text = _inputs(batch=1)
    enable_psa(model, CFG)
    attn = model.blocks[0].attn1
    hidden = torch.randn(1, 80, attn.inner_dim)
    rope = model.rope(x)
    psa_layers(model)[0].force_level = 1
    model.blocks[0].attn1.processor.grid = (5, 4, 4)
    with torch.no_grad():
        out = attn(hidden, None, None, rope)
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden).unflatten(2, (attn.heads, -1))

        def rot(z, cos, sin):  # complex multiplication form of Wan's rope
            zc = torch.view_as_complex(z.double().unflatten(-1, (-1, 2)).contiguous())
            fc = torch.complex(cos[..., 0::2].double(), sin[..., 1::2].double())
            return torch.view_as_real(zc * fc).flatten(-2).float()

        q, k = rot(q, *rope), rot(k, *rope)
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        ref = attn.to_out[0](ref.transpose(1, 2).flatten(2, 3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_psa(model):
    x, t, text = _inputs()
    enable_psa(model, CFG)
    model.train()
    x.requires_grad_(True)
    model(x, t, text).sample.square().mean().backward()
    for name in ("to_q", "to_k", "to_v", "to_out"):
        mod = getattr(model.blocks[0].attn1, name)
        weight = mod[0].weight if name == "to_out" else mod.weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(model):
    x, t, text = _inputs()
    enable_psa(model, CFG)
    other = copy.deepcopy(model)
    other.enable_gradient_checkpointing()
    model.train(), other.train()
    for m in (model, other):
        m(x, t, text).sample.square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_budget_zero_takes_the_sdpa_path(model, monkeypatch):
    x, t, text = _inputs()
    with torch.no_grad():
        dense = model(x, t, text).sample
    enable_psa(model, CFG)
    set_psa_budget(model, 0.0)
    assert all(layer.budget == 0.0 for layer in psa_layers(model))

    def boom(*args, **kwargs):
        raise AssertionError("sparse machinery called at budget 0")

    monkeypatch.setattr(PSAAttention, "select_levels", boom)
    monkeypatch.setattr("psa_train.attention.layer.pyramid_attention", boom)
    with torch.no_grad():
        out = model(x, t, text).sample
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_disable_restores_dense_and_psa_disabled_context(model):
    x, t, text = _inputs()
    originals = [b.attn1.processor for b in model.blocks]
    with torch.no_grad():
        dense = model(x, t, text).sample
    enable_psa(model, CFG.replace(bands={1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0}))
    with torch.no_grad(), psa_disabled(model):
        torch.testing.assert_close(model(x, t, text).sample, dense, rtol=0, atol=0)
    assert all(b.attn1.processor.enabled for b in model.blocks)  # switched back on
    disable_psa(model)
    assert [b.attn1.processor for b in model.blocks] == originals
    assert len(model._forward_pre_hooks) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, text).sample, dense, rtol=0, atol=0)


def test_grid_follows_the_input_and_deepcopy_keeps_working(model):
    enable_psa(model, CFG)
    copied = copy.deepcopy(model)
    x, t, text = _inputs(frames=3, size=16)
    with torch.no_grad():
        a, b = model(x, t, text).sample, copied(x, t, text).sample
    assert [p.grid for p in copied.modules() if isinstance(p, WanPSAProcessor)] == [(3, 8, 8)] * 2
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="not supported.*WanTransformer3DModel"):
        enable_psa(torch.nn.Linear(2, 2), CFG)
    with pytest.raises(ValueError, match="not supported"):
        disable_psa(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_step_benchmark_runs_on_cpu_with_the_tiny_arch(capsys, monkeypatch):
    import importlib.util

    from distill_helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as when run as a script: its helpers
    spec = importlib.util.spec_from_file_location("wan_step_bench", REPO / "benchmarks" / "wan_step_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([
        "--arch", "tiny", "--device", "cpu", "--dtype", "float32", "--frames", "17", "--height", "64",
        "--width", "64", "--text-len", "32", "--steps", "1", "--warmup", "0",
        "--variants", "dense-cudnn", "psa", "psa-forced", "no-attention",
    ]) == 0
    out = capsys.readouterr().out
    assert "training step" in out and "self-attention only" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("dense", "psa", "no-attention"))]
    assert [r[0] for r in rows] == ["dense", "psa", "psa-forced", "no-attention"] * 2
    assert rows[3][-1] == "-"  # no attention, no density
    assert float(rows[2][-1]) == pytest.approx(0.125)  # forced level 8 -> density 1/8
