"""The latent DataModule: format, batches, seeded order, equal ranks, exact mid-epoch resume."""

from __future__ import annotations

import io
import json

import lightning as L
import numpy as np
import pytest
import torch

from psa_train.data import (
    CacheMismatchError,
    LatentShardDataModule,
    SkippedSamplesLogger,
    encode_latent_sample,
)
from psa_train.data.manifest import FORMAT, write_manifest
from psa_train.data.tario import write_tar
from psa_train.models.tiny_configs import LATENT_SHAPE, TEXT_DIM, TEXT_MAX_LENGTH


def fake_sample(shard: int, i: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * shard + i)
    n = 3 + (i % 7)
    mask = torch.zeros(TEXT_MAX_LENGTH, dtype=torch.long)
    mask[:n] = 1
    embeds = torch.randn(TEXT_MAX_LENGTH, TEXT_DIM, generator=gen) * mask[:, None]
    return f"s{shard}k{i:03d}", torch.randn(*LATENT_SHAPE, generator=gen), embeds, mask


def write_latent_shards(directory, sizes, manifest=True, settings=None):
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for s, n in enumerate(sizes):
        samples = []
        for i in range(n):
            key, lat, emb, mask = fake_sample(s, i)
            samples.append(encode_latent_sample(key, lat, emb, mask, f"caption {key}", {"label": i % 3}))
        write_tar(directory / f"lat-{s:06d}.tar", samples)
        entries[f"lat-{s:06d}.tar"] = {"input": "x", "samples": n, "skipped": 0}
    if manifest:
        write_manifest(directory, {"format": FORMAT, "settings": settings or {"model_id": "tiny"}, "shards": entries})
    last = len(sizes) - 1
    return str(directory / (f"lat-{{000000..{last:06d}}}.tar" if last else "lat-000000.tar"))


def keys_of(loader):
    return [k for b in loader for k in b["key"]]


def test_batches_have_the_contract_shapes_and_stored_values(tmp_path):
    pattern = write_latent_shards(tmp_path / "c", [5, 4])
    dm = LatentShardDataModule(train_shards=pattern, val_shards=pattern, batch_size=3, num_workers=0)
    loader = dm.val_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # 9 samples, no drop_last in validation
    b = batches[0]
    assert b["latents"].shape == (3, *LATENT_SHAPE) and b["latents"].dtype == torch.float32
    assert b["text_embeds"].shape == (3, TEXT_MAX_LENGTH, TEXT_DIM) and b["text_mask"].dtype == torch.int64
    for batch in batches:
        for j, key in enumerate(batch["key"]):
            shard, i = int(key[1]), int(key[3:])
            _, lat, emb, mask = fake_sample(shard, i)
            assert torch.equal(batch["latents"][j], lat)
            assert torch.equal(batch["text_embeds"][j], emb)  # zero past the mask, as stored
            assert torch.equal(batch["text_mask"][j], mask)
            assert batch["caption"][j] == f"caption {key}" and batch["meta"][j] == {"label": i % 3}
    assert len(dm.train_dataloader()) == 3 and dm.skipped == 0


def test_npy_members_and_corrupt_samples(tmp_path):
    key, lat, emb, mask = fake_sample(0, 1)

    def npy(t):
        buf = io.BytesIO()
        np.save(buf, t.numpy(), allow_pickle=False)
        return buf.getvalue()

    n = int(mask.sum())
    samples = [
        {"__key__": "npy", "latents.npy": npy(lat), "text_embeds.npy": npy(emb[:n]), "text_mask.npy": npy(mask)},
        {"__key__": "broken", "safetensors": b"not safetensors at all", "txt": "x"},
        {"__key__": "partial", "latents.npy": npy(lat), "txt": "no text"},
        encode_latent_sample("ok", lat, emb, mask, "fine", dtype=torch.bfloat16),
    ]
    write_tar(tmp_path / "mixed.tar", samples)
    dm = LatentShardDataModule(val_shards=str(tmp_path / "mixed.tar"), batch_size=4, num_workers=0)
    (batch,) = list(dm.val_dataloader())
    assert batch["key"] == ["npy", "ok"]
    assert torch.equal(batch["latents"][0], lat) and torch.equal(batch["text_embeds"][0], emb)
    assert torch.allclose(batch["latents"][1], lat, atol=0.05, rtol=0.01)  # stored as bf16
    assert dm.skipped == 2


def test_test_and_predict_read_test_shards_else_val_shards(tmp_path):
    held_out = write_latent_shards(tmp_path / "test", [3])
    val = write_latent_shards(tmp_path / "val", [5])
    keys = lambda loader: [k for batch in loader for k in batch["key"]]  # noqa: E731
    dm = LatentShardDataModule(val_shards=val, test_shards=held_out, batch_size=2, num_workers=0)
    assert len(keys(dm.test_dataloader())) == 3 and len(keys(dm.predict_dataloader())) == 3
    assert len(keys(dm.val_dataloader())) == 5
    fallback = LatentShardDataModule(val_shards=val, batch_size=2, num_workers=0)
    assert keys(fallback.test_dataloader()) == keys(fallback.val_dataloader())
    with pytest.raises(ValueError, match="test_shards"):
        LatentShardDataModule(train_shards=val, num_workers=0).test_dataloader()


def test_order_is_a_function_of_seed_and_epoch(tmp_path):
    pattern = write_latent_shards(tmp_path / "c", [6, 6, 6])

    def epochs(seed, n=2):
        dm = LatentShardDataModule(train_shards=pattern, batch_size=2, num_workers=0, shuffle_buffer=5, seed=seed)
        loader = dm.train_dataloader()
        return [keys_of(loader) for _ in range(n)]

    first = epochs(0)
    assert first == epochs(0)
    assert first[0] != first[1] and sorted(first[0]) == sorted(first[1])
    assert epochs(1)[0] != first[0]


@pytest.mark.parametrize("sizes", [[5, 5, 3], [9]])
def test_ranks_get_equal_disjoint_shares(tmp_path, monkeypatch, sizes):
    pattern = write_latent_shards(tmp_path / "c", sizes)
    seen, lengths = [], []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = LatentShardDataModule(train_shards=pattern, batch_size=2, num_workers=0)
        loader = dm.train_dataloader()
        keys = keys_of(loader)
        lengths.append((len(loader), len(keys) // 2))
        seen.append(set(keys))
    assert lengths[0] == lengths[1] and lengths[0][0] == lengths[0][1]
    assert not seen[0] & seen[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_exactly_mid_epoch(tmp_path, num_workers):
    pattern = write_latent_shards(tmp_path / "c", [8, 8])

    def make():
        dm = LatentShardDataModule(
            train_shards=pattern, batch_size=2, num_workers=num_workers, shuffle_buffer=4, seed=3
        )
        return dm.train_dataloader()

    loader = make()
    full = [[b["key"] for b in loader] for _ in range(2)]  # two epochs
    assert len(full[0]) == len(loader) == 8 and loader.state_dict() == {"epoch": 2, "batches": 0}
    for epoch, done in [(0, 3), (1, 5), (0, 0)]:
        resumed = make()
        resumed.load_state_dict({"epoch": epoch, "batches": done})
        assert [b["key"] for b in resumed] == full[epoch][done:]
        assert resumed.state_dict() == {"epoch": epoch + 1, "batches": 0}


class KeyRecorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(LATENT_SHAPE[0], 1)
        self.keys: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.keys.append(batch["key"])
        return self.layer(batch["latents"].mean(dim=(2, 3, 4))).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_resume_continues_the_same_stream(tmp_path):
    pattern = write_latent_shards(tmp_path / "c", [7, 7])  # 7 batches of 2 per epoch

    def fit(max_steps, ckpt_path=None, every=None):
        callbacks = [SkippedSamplesLogger()]
        if every:
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(
                    dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1, filename="{step}"
                )
            )
        trainer = L.Trainer(
            max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
            num_sanity_val_steps=0,
        )  # fmt: skip
        model = KeyRecorder()
        dm = LatentShardDataModule(train_shards=pattern, batch_size=2, num_workers=0, shuffle_buffer=4, seed=7)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.keys, trainer

    full, trainer = fit(11, every=4)
    assert trainer.callback_metrics["data/skipped_samples"] == 0
    assert len(full) == 11 and full[7:] != full[:4]  # crossed into a reshuffled second epoch
    assert trainer.datamodule.state_dict() == {"epoch": 1, "batches": 4}
    for step in (4, 8):
        resumed, _ = fit(11, ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt"))
        assert resumed == full[step:]
    saved = torch.load(tmp_path / "ckpt" / "step=8.ckpt", weights_only=False)
    assert saved["LatentShardDataModule"] == {"epoch": 1, "batches": 1}


def test_setup_refuses_a_cache_made_with_other_settings(tmp_path):
    settings = {"model_id": "tiny", "num_frames": 17, "height": 64}
    pattern = write_latent_shards(tmp_path / "c", [2], settings=settings)
    LatentShardDataModule(train_shards=pattern, model_id="tiny", precompute={"num_frames": 17}).setup("fit")
    dm = LatentShardDataModule(train_shards=pattern, model_id="other/model", precompute={"num_frames": 33, "height": 64})
    with pytest.raises(CacheMismatchError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "model_id" in message and "num_frames" in message and "height" not in message
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["settings"] == settings
