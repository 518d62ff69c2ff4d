"""The tiny recipe under DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo), and resume
from the sharded checkpoint with `--ckpt_path last`.

Lightning refuses DeepSpeed without CUDA, so the strategy is `cpu_deepspeed.CPUDeepSpeedStrategy`
(a test-only subclass of our crash-safe `AtomicDeepSpeedStrategy`). DeepSpeed JIT-builds its CPU
communication op once (~1 min) into TORCH_EXTENSIONS_DIR (default
~/.cache/psa-train/torch_extensions; cache it in CI).
"""

import os

import pytest
import torch
from distill_helpers import TORCH_EXTENSIONS_DIR, demo_data, logged, psa_train, tiny_recipe  # noqa: F401

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow


def _deepspeed_fit(recipe, stage, *extra):
    result = psa_train(
        "fit", "--config", str(recipe),
        "--trainer.devices", "2",
        "--trainer.strategy", "cpu_deepspeed.CPUDeepSpeedStrategy",
        "--trainer.strategy.stage", str(stage),
        "--trainer.limit_val_batches", "0",
        *extra,
        env={"TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS_DIR, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-12000:]
    return result


def _client_state(ckpt_dir):
    """Lightning's trainer state inside a DeepSpeed checkpoint (rank 0's model-states file)."""
    files = sorted((ckpt_dir / "checkpoint").glob("*model_states.pt"))
    assert files, list(ckpt_dir.rglob("*"))
    return torch.load(files[0], map_location="cpu", weights_only=False)


@pytest.mark.parametrize("stage", [2, 3])
def test_tiny_recipe_under_zero_two_processes_and_resume_from_the_sharded_checkpoint(tmp_path, demo_data, stage):  # noqa: F811
    recipe = tiny_recipe(tmp_path, demo_data, every_n_steps=2, max_steps=2)
    run = tmp_path / "run"
    _deepspeed_fit(recipe, stage)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and last.is_symlink()  # published atomically (psa_train.checkpointing)
    shards = sorted(p.name for p in (last / "checkpoint").iterdir())
    assert any("zero_pp_rank_1" in name for name in shards), shards  # one optimizer shard per rank
    assert _client_state(last)["global_step"] == 2
    first = logged(run)
    assert sorted(first) == [0, 1] and all(v > 0 for v in first.values())

    _deepspeed_fit(recipe, stage, "--ckpt_path", "last", "--trainer.max_steps", "3",
                   "--trainer.logger.init_args.version", "resumed")
    resumed = logged(run / "logs" / "resumed", root=True)
    assert sorted(resumed) == [2]  # continues at the third step, not from scratch
    lr = logged(run / "logs" / "resumed", "train/lr", root=True)
    assert lr[2] == pytest.approx(1e-4)  # past the 2 warm-up steps: the scheduler was restored
    state = _client_state(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 3
    # SparsityAnnealing of the tiny recipe (0.25 -> 1.0 over steps 0-10) set the last step's budget.
    assert state["psa_train"]["budget"] == pytest.approx(0.25 + 0.75 * 2 / 10)
    leftovers = [p for p in os.listdir(run / "checkpoints") if ".link-" in p or ".legacy-" in p]
    assert not leftovers
