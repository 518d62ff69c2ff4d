"""Wan's VAE and UMT5 text encoder: loading them, and encoding clips and captions as Wan does.

`model_id` is a diffusers repo id or local directory laid out like one (`vae/`, `text_encoder/`,
`tokenizer/`), or the literal "tiny" for the untrained demo models of `tiny_configs`. Encoding
mirrors diffusers' Wan pipelines exactly: latents are the posterior mode, normalised as
`(z - latents_mean) * (1 / latents_std)` with the stats from the VAE config; captions are cleaned
with the pipeline's `prompt_clean`, padded to `max_length`, and the embeddings past each
caption's length are zeroed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from . import tiny_configs

TINY = "tiny"


def load_vae(model_id: str, *, dtype: torch.dtype = torch.float32):
    """`AutoencoderKLWan` from `<model_id>/vae` (or the tiny one)."""
    if model_id == TINY:
        vae = tiny_configs.build_tiny_vae()
        return vae if dtype == torch.float32 else vae.to(dtype)
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype).eval()


def load_text_encoder(model_id: str, *, dtype: torch.dtype = torch.float32):
    """`UMT5EncoderModel` from `<model_id>/text_encoder` (or the tiny one)."""
    if model_id == TINY:
        encoder = tiny_configs.build_tiny_text_encoder()
        return encoder if dtype == torch.float32 else encoder.to(dtype)
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel.from_pretrained(model_id, subfolder="text_encoder", dtype=dtype).eval()


def load_tokenizer(model_id: str):
    """The tokenizer from `<model_id>/tokenizer` (or the tiny one)."""
    if model_id == TINY:
        return tiny_configs.build_tiny_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_id, subfolder="tokenizer")


@dataclass
class TextVideoEncoders:
    """The three pieces that turn (clip, caption) into (latents, text embeddings)."""

    model_id: str
    vae: Any
    text_encoder: Any
    tokenizer: Any

    def to(self, device: torch.device | str) -> TextVideoEncoders:
        self.vae.to(device)
        self.text_encoder.to(device)
        return self

    def fingerprint(self) -> str:
        """Hash of the model id, both model configs and the tokenizer: identifies the encoders."""
        return encoder_fingerprint(self.model_id, self.vae, self.text_encoder, self.tokenizer)


def load_encoders(
    model_id: str,
    *,
    device: torch.device | str | None = None,
    vae_dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype = torch.float32,
) -> TextVideoEncoders:
    encoders = TextVideoEncoders(
        model_id,
        load_vae(model_id, dtype=vae_dtype),
        load_text_encoder(model_id, dtype=text_dtype),
        load_tokenizer(model_id),
    )
    return encoders.to(device) if device is not None else encoders


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


def normalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> the normalised latents the Wan transformer works on."""
    mean, inv_std = _latent_stats(vae, latents)
    return (latents - mean) * inv_std


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_latents` (what the pipeline does before `vae.decode`)."""
    mean, inv_std = _latent_stats(vae, latents)
    return latents / inv_std + mean


@torch.no_grad()
def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """Clips `[B, 3, T, H, W]` in [-1, 1] -> normalised latents `[B, 16, 1 + (T-1)/4, H/8, W/8]`."""
    param = next(vae.parameters())
    latents = vae.encode(video.to(param.device, param.dtype)).latent_dist.mode()
    return normalize_latents(vae, latents)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (embeddings `[B, max_length, D]`, zero past each caption; mask `[B, max_length]`)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    inputs = tokenizer(
        [prompt_clean(c) for c in captions],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = inputs.input_ids, inputs.attention_mask
    device = next(text_encoder.parameters()).device
    embeds = text_encoder(ids.to(device), mask.to(device)).last_hidden_state
    keep = (torch.arange(max_length, device=device)[None, :] < mask.gt(0).sum(1).to(device)[:, None])
    return embeds * keep[..., None].to(embeds.dtype), mask.long()


def _clean_config(config: Any) -> dict:
    items = dict(config)
    drop = {"transformers_version", "dtype", "torch_dtype", "architectures"}
    return {k: v for k, v in sorted(items.items()) if not k.startswith("_") and k not in drop}


def encoder_fingerprint(model_id: str, vae, text_encoder, tokenizer) -> str:
    """Short sha256 over model id, VAE config, text-encoder config and tokenizer identity."""
    payload = {
        "model_id": model_id,
        "vae": _clean_config(vae.config),
        "text_encoder": _clean_config(text_encoder.config.to_dict()),
        "tokenizer": {"class": type(tokenizer).__name__, "size": len(tokenizer)},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
