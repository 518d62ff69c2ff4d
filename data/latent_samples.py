"""The latent sample format: writing one, reading one back, batching them (no Lightning here).

A sample in the tar is `{key}.safetensors` (tensors `latents` [C, T, H, W], `text_embeds`
[n, D] trimmed to the caption's n tokens, `text_mask` [L]), `{key}.txt` (caption) and
`{key}.json` (labels, source); `.npy` members named `latents.npy`, `text_embeds.npy`,
`text_mask.npy` are read too (never pickle). Batches are::

    {"latents": [B, C, T, H, W] float32, "text_embeds": [B, L, D] float32 (zero past the mask),
     "text_mask": [B, L] int64, "caption": [str], "key": [str], "meta": [dict]}
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .sharding import BadSample
from .tario import RawSample
from .video_samples import read_caption

TENSOR_NAMES = ("latents", "text_embeds", "text_mask")


def encode_latent_sample(
    key: str,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    caption: str = "",
    meta: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """One tar sample. `text_embeds` [L, D] is stored only up to the mask's length."""
    length = int(text_mask.gt(0).sum())
    tensors = {
        "latents": latents.detach().to("cpu", dtype).contiguous(),
        "text_embeds": text_embeds[:length].detach().to("cpu", dtype).contiguous(),
        "text_mask": text_mask.detach().to("cpu", torch.int8).contiguous(),
    }
    return {
        "__key__": key,
        "safetensors": save_safetensors(tensors),
        "txt": caption,
        "json": json.dumps(meta or {}, sort_keys=True),
    }


def read_latent_tensors(raw: RawSample) -> dict[str, torch.Tensor]:
    """The tensors of a raw sample from its `.safetensors` and `.npy` members."""
    tensors: dict[str, torch.Tensor] = {}
    for ext, data in raw.items():
        if ext.startswith("__"):
            continue
        try:
            if ext.endswith("safetensors"):
                tensors.update(load_safetensors(data))
            elif ext.endswith(".npy") and ext[:-4] in TENSOR_NAMES:
                tensors[ext[:-4]] = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).copy())
        except Exception as err:  # safetensors/numpy raise various types on corrupt data
            raise BadSample(f"unreadable {ext} ({type(err).__name__}: {err})") from err
    return tensors


class LatentSampleDecoder:
    """Raw sample -> padded float tensors + caption; picklable for DataLoader workers."""

    def __call__(self, raw: RawSample, epoch: int) -> dict:
        t = read_latent_tensors(raw)
        missing = [n for n in TENSOR_NAMES if n not in t]
        if missing:
            raise BadSample(f"missing tensors {missing}")
        mask = t["text_mask"].reshape(-1).long()
        embeds = t["text_embeds"].float()
        if embeds.ndim != 2 or embeds.shape[0] > mask.numel():
            raise BadSample(f"text_embeds of shape {tuple(embeds.shape)} do not fit a mask of {mask.numel()}")
        padded = embeds.new_zeros(mask.numel(), embeds.shape[1])
        padded[: embeds.shape[0]] = embeds
        caption, meta = read_caption(raw)
        return {
            "latents": t["latents"].float(),
            "text_embeds": padded,
            "text_mask": mask,
            "caption": caption,
            "key": raw["__key__"],
            "meta": meta,
        }


def collate_latents(samples: list[dict]) -> dict:
    batch = {n: torch.stack([s[n] for s in samples]) for n in TENSOR_NAMES}
    for name in ("caption", "key", "meta"):
        batch[name] = [s[name] for s in samples]
    return batch
