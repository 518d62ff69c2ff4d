"""PSA inside HF transformers vision encoders (VideoMAE, ViT, DINOv2, DINOv2+registers, SigLIP).

Tiny random configs built in code, float64 so that "levels forced to 1" must match the dense
model to rounding. Grids are odd-sized and change between calls.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from one_thread import one_torch_thread  # noqa: F401  (autouse)

from psa_train.attention import PSAConfig
from psa_train.models import vit as vit_psa
from psa_train.models.vit import (
    VisionPSAProcessor,
    disable_psa_vit,
    enable_psa_vit,
    is_vision_encoder,
    psa_density,
    psa_disabled,
    psa_layers,
    set_psa_budget,
)

transformers = pytest.importorskip("transformers")

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96)
# 64-token query blocks / 32-token key blocks over 2x4x4 (video) or 1x4x8 (image) tiles.
CFG = PSAConfig(block_m=64, block_n=32, layout="tile", tile_size=(2, 4, 4), bands={1: 0.2, 2: 0.1, 4: 0.1, 8: 0.2})


def _videomae():
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    cfg = VideoMAEConfig(**COMMON, image_size=(40, 56), patch_size=8, num_frames=6, tubelet_size=2, num_labels=5)
    return VideoMAEForVideoClassification(cfg), dict(shape=(2, 6, 3, 40, 56)), (3, 5, 7), 0


def _vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(**COMMON, image_size=32, patch_size=4)
    return ViTModel(cfg), dict(shape=(2, 3, 36, 52), interpolate_pos_encoding=True), (1, 9, 13), 1


def _dinov2():
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(**COMMON, image_size=32, patch_size=4)), dict(shape=(2, 3, 44, 36)), (1, 11, 9), 1


def _dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(**COMMON, image_size=32, patch_size=4, num_register_tokens=4)
    return Dinov2WithRegistersModel(cfg), dict(shape=(2, 3, 44, 36)), (1, 11, 9), 5


def _siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(**COMMON, image_size=32, patch_size=4)
    return SiglipVisionModel(cfg), dict(shape=(2, 3, 36, 52), interpolate_pos_encoding=True), (1, 9, 13), 0


FAMILIES = {"videomae": _videomae, "vit": _vit, "dinov2": _dinov2, "dinov2_registers": _dinov2_registers,
            "siglip": _siglip}


def _build(name, seed=0):
    torch.manual_seed(seed)
    model, spec, grid, prefix = FAMILIES[name]()
    return model.double().eval(), spec, grid, prefix


def _run(model, spec, seed=1):
    kwargs = {k: v for k, v in spec.items() if k != "shape"}
    x = torch.randn(*spec["shape"], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = model(x, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_force_level_1_equals_dense_and_grads_match(name):
    model, spec, grid, prefix = _build(name)
    dense_model = copy.deepcopy(model)
    keys = set(model.state_dict())
    processors = enable_psa_vit(model, CFG)
    assert set(model.state_dict()) == keys  # no parameters or persistent buffers added
    assert len(processors) == 2 and all(isinstance(p, VisionPSAProcessor) for p in processors)
    assert all(p.config.prefix_tokens == prefix for p in processors)
    assert model.config._attn_implementation == "psa" and dense_model.config._attn_implementation == "sdpa"
    for p in processors:
        p.psa.force_level = 1
    seen = []
    processors[0].psa.register_forward_hook(lambda m, a, kw, o: seen.append(kw["grid"]), with_kwargs=True)

    out = _run(model, spec)
    ref = _run(dense_model, spec)
    assert seen == [grid]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    ref.square().sum().backward()
    dense_params = dict(dense_model.named_parameters())
    for pname, param in model.named_parameters():
        if dense_params[pname].grad is None:
            assert param.grad is None, pname
            continue
        torch.testing.assert_close(param.grad, dense_params[pname].grad, rtol=1e-8, atol=1e-10, msg=pname)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sparse_levels_change_the_output_and_gradients_flow(name):
    model, spec, grid, prefix = _build(name)
    with torch.no_grad():
        ref = _run(model, spec)
    enable_psa_vit(model, CFG)
    out = _run(model, spec)
    density = psa_density(model)
    assert density is not None and 0.0 < density < 0.9
    assert not torch.allclose(out, ref, atol=1e-6)  # really sparse, not dense in disguise
    out.square().sum().backward()
    checked = 0
    for layer in model.modules():
        if getattr(layer, vit_psa.PROCESSOR_ATTR, None) is None:
            continue  # not a patched attention module
        for proj in ("q_proj", "k_proj", "v_proj", "query", "key", "value"):
            linear = getattr(layer, proj, None)
            if isinstance(linear, torch.nn.Linear):
                g = linear.weight.grad
                assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, proj
                checked += 1
    assert checked == 6  # q, k, v of both layers


@pytest.mark.parametrize("name", ["videomae", "vit", "dinov2_registers"])
def test_budget_zero_is_plain_sdpa(name, monkeypatch):
    model, spec, grid, prefix = _build(name)
    with torch.no_grad():
        ref = _run(model, spec)
    enable_psa_vit(model, CFG)
    set_psa_budget(model, 0.0)

    def fail(*args, **kwargs):
        raise AssertionError("pyramid_attention called at budget 0")

    monkeypatch.setattr("psa_train.attention.layer.pyramid_attention", fail)
    with torch.no_grad():
        out = _run(model, spec)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert psa_density(model) == 1.0


def test_grid_follows_the_input_size_per_forward():
    model, spec, _, _ = _build("dinov2")
    enable_psa_vit(model, CFG)
    grids = []
    psa_layers(model)[0].register_forward_hook(lambda m, a, kw, o: grids.append(kw["grid"]), with_kwargs=True)
    with torch.no_grad():
        for h, w in ((44, 36), (20, 64), (33, 35)):  # 33x35 -> floor to 8x8 patches
            _run(model, dict(shape=(1, 3, h, w)))
    assert grids == [(1, 11, 9), (1, 5, 16), (1, 8, 8)]


def test_disable_restores_dense_and_psa_disabled_context():
    model, spec, _, _ = _build("videomae")
    with torch.no_grad():
        ref = _run(model, spec)
    enable_psa_vit(model, CFG)
    with torch.no_grad():
        sparse = _run(model, spec)
        with psa_disabled(model):
            dense = _run(model, spec)
        again = _run(model, spec)
    torch.testing.assert_close(dense, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(again, sparse, rtol=0, atol=0)
    assert not torch.allclose(sparse, ref, atol=1e-6)

    enable_psa_vit(model, CFG.replace(budget=0.5))  # re-patching replaces, never stacks
    assert len(psa_layers(model)) == 2 and psa_layers(model)[0].budget == 0.5
    disable_psa_vit(model)
    assert psa_layers(model) == [] and model.config._attn_implementation == "sdpa"
    assert not any(model.videomae.embeddings._forward_pre_hooks)
    with torch.no_grad():
        torch.testing.assert_close(_run(model, spec), ref, rtol=0, atol=0)


def test_deepcopy_of_a_patched_model_has_its_own_grid_state():
    model, spec, _, _ = _build("vit")
    enable_psa_vit(model, CFG)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        _run(twin, dict(shape=(1, 3, 24, 28), interpolate_pos_encoding=True))
    twin_state = vit_psa.psa_processors(twin)[0].grid_state
    assert twin_state.grid == (1, 6, 7)
    assert vit_psa.psa_processors(model)[0].grid_state.grid is None
    assert vit_psa.psa_processors(twin)[1].grid_state is twin_state


def test_siglip_full_model_patches_only_the_vision_tower():
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    text = dict(COMMON, vocab_size=50, max_position_embeddings=16)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=dict(COMMON, image_size=32, patch_size=4))).eval()
    processors = enable_psa_vit(model, CFG)
    assert len(processors) == 2
    assert model.config.vision_config._attn_implementation == "psa"
    assert model.config.text_config._attn_implementation == "sdpa"
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out.logits_per_image).all() and psa_density(model) is not None


def test_bad_inputs_raise_clear_errors():
    model, spec, _, _ = _build("vit")
    assert is_vision_encoder(model) and not is_vision_encoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not supported"):
        enable_psa_vit(torch.nn.Sequential(torch.nn.Linear(2, 2)), CFG)
    with pytest.raises(ValueError, match="prefix_tokens=3 conflicts"):
        enable_psa_vit(model, CFG.replace(prefix_tokens=3))
    with pytest.raises(ValueError, match="unknown PSAConfig keys"):
        enable_psa_vit(model, {"block_mm": 64})
    enable_psa_vit(model, CFG.to_dict())
    # a layer called on its own has no grid
    attn = next(m for m in model.modules() if type(m).__name__ == "ViTAttention")
    with pytest.raises(RuntimeError, match="token grid"):
        attn(torch.randn(1, 10, 64, dtype=torch.float64))

    vmae, _, _, _ = _build("videomae")
    enable_psa_vit(vmae, CFG)
    x = torch.randn(1, 6, 3, 40, 56, dtype=torch.float64)
    mask = torch.zeros(1, 105, dtype=torch.bool)
    mask[:, :50] = True
    with pytest.raises(ValueError, match="bool_masked_pos"):
        vmae.videomae(x, bool_masked_pos=mask)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_vit_force_level_1_equals_dense():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=64,
                              dynamic_img_size=True).double().eval()
    dense = copy.deepcopy(model)
    processors = enable_psa_vit(model, CFG)
    assert processors and processors[0].config.prefix_tokens == model.num_prefix_tokens
    for p in processors:
        p.psa.force_level = 1
    x = torch.randn(2, 3, 80, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-10, atol=1e-10)
    disable_psa_vit(model)
    assert not psa_layers(model)


def test_videomae_step_bench_cpu_smoke(capsys, monkeypatch):
    import importlib.util as iu
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "videomae_step_bench.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: its helpers
    spec = iu.spec_from_file_location("videomae_step_bench", path)
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--arch", "tiny", "--device", "cpu", "--batch", "1", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"dense-cudnn", "psa", "psa-forced"} <= set(rows)
    assert "| 0.250 |" in rows["psa-forced"] and "| 1.000 |" in rows["dense-cudnn"]
