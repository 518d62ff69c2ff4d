"""Exact resume with `--ckpt_path last`, and checkpoints that survive an interrupted write."""

import os

import pytest
import torch
from distill_helpers import demo_data, logged, tiny_recipe  # noqa: F401

from psa_train import checkpointing, cli
from psa_train.checkpointing import atomic_torch_save, publish_directory, remove_published, staging_directory


class PowerCut(Exception):
    pass


def _fit(recipe, *extra):
    cli.main(["fit", "--config", str(recipe), "--trainer.limit_val_batches", "0", *extra])


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_the_uninterrupted_run(tmp_path, demo_data):  # noqa: F811
    whole = tiny_recipe(tmp_path / "whole", demo_data, every_n_steps=3, max_steps=8)
    split = tiny_recipe(tmp_path / "split", demo_data, every_n_steps=3, max_steps=8)
    _fit(whole)
    _fit(split, "--trainer.max_steps", "6")  # stops after 6 steps; last.ckpt is at step 6
    first = logged(tmp_path / "split" / "run")
    assert sorted(first) == [0, 1, 2, 3, 4, 5]
    _fit(split, "--ckpt_path", "last", "--trainer.logger.init_args.version", "resumed")
    assert sorted(logged(tmp_path / "split" / "run" / "logs" / "resumed", root=True)) == [6, 7]  # from step 6 on
    a, b = logged(tmp_path / "whole" / "run"), logged(tmp_path / "split" / "run")
    assert sorted(a) == sorted(b) == list(range(8))
    assert b == a  # bit-identical losses: weights, AdamW moments, lr schedule, noise draws, data
    for key in ("train/lr", "train/budget", "train/density"):
        assert logged(tmp_path / "split" / "run", key) == logged(tmp_path / "whole" / "run", key), key
    # the resumed steps saw new batches, not a replay of the epoch's first ones
    assert [b[i] for i in (6, 7)] != [b[i] for i in (0, 1)]


@pytest.mark.slow
def test_a_checkpoint_cut_off_while_written_never_replaces_the_last_good_one(tmp_path, demo_data, monkeypatch):  # noqa: F811
    recipe = tiny_recipe(tmp_path, demo_data, every_n_steps=1, max_steps=3)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    real = checkpointing._serialize
    calls = []

    def dying_serialize(obj, f):
        calls.append(obj["global_step"])
        if obj["global_step"] == 3:
            f.write(b"half a checkpoint")  # the write begins, then the power goes
            raise PowerCut()
        real(obj, f)

    monkeypatch.setattr(checkpointing, "_serialize", dying_serialize)
    with pytest.raises(PowerCut):
        _fit(recipe)
    assert 3 in calls
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # still the last complete checkpoint
    assert not [p for p in os.listdir(ckpt_dir) if ".tmp-" in p]  # no half-written leftovers
    monkeypatch.setattr(checkpointing, "_serialize", real)
    _fit(recipe, "--ckpt_path", "last", "--trainer.logger.init_args.version", "resumed")  # step 2 -> 3
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 3
    assert sorted(logged(tmp_path / "run" / "logs" / "resumed", root=True)) == [2]


def test_atomic_save_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    def cut(obj, f):
        f.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing, "_serialize", cut)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]
    monkeypatch.undo()
    atomic_torch_save({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 2}


def test_lightning_own_save_writes_through_the_system_temp_folder():
    """Why AtomicCheckpointIO exists: Lightning's local save goes via mkstemp() in /tmp + move
    (a copy, not a rename, when /tmp is another filesystem); ours renames within the folder."""
    import inspect

    from fsspec.implementations.local import LocalFileOpener

    assert "tempfile.mkstemp()" in inspect.getsource(LocalFileOpener._open)
    assert "shutil.move" in inspect.getsource(LocalFileOpener.commit)


def _write_version(folder, marker):
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "shard.pt").write_text(marker)


def test_sharded_checkpoint_folders_are_swapped_atomically(tmp_path):
    final = tmp_path / "last.ckpt"
    first = staging_directory(final)
    _write_version(first, "step 10")
    publish_directory(first, final)
    assert (final / "checkpoint" / "shard.pt").read_text() == "step 10" and final.is_symlink()

    # a save that dies half-way leaves its staging folder behind and last.ckpt untouched
    broken = staging_directory(final)
    (broken / "checkpoint").mkdir(parents=True)
    (broken / "checkpoint" / "shard.pt").write_text("step 20 (half")
    assert (final / "checkpoint" / "shard.pt").read_text() == "step 10"

    # the next complete save replaces it and clears the leftovers
    second = staging_directory(final)
    _write_version(second, "step 30")
    publish_directory(second, final)
    assert (final / "checkpoint" / "shard.pt").read_text() == "step 30"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, second.name])

    remove_published(final)
    assert list(tmp_path.iterdir()) == []


def test_publishing_over_a_plain_folder(tmp_path):
    final = tmp_path / "last.ckpt"
    _write_version(final, "old")  # e.g. written by Lightning's own DeepSpeedStrategy
    new = staging_directory(final)
    _write_version(new, "new")
    publish_directory(new, final)
    assert (final / "checkpoint" / "shard.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, new.name])
