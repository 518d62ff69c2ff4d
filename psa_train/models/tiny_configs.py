"""Tiny, untrained stand-ins for Wan's VAE, UMT5 text encoder and tokenizer, built in code.

They let the demo dataset, the tests and the tiny recipe run anywhere without a download. The
weights are random (seeded, so every build is identical); only the shapes and the data path are
real. Shape contract used across the project (demo data and its latents):

- clips: DEMO_NUM_FRAMES x DEMO_HEIGHT x DEMO_WIDTH RGB (17 x 64 x 64)
- latents: LATENT_SHAPE = (LATENT_CHANNELS, 5, 8, 8) as (C, T, H, W), float
- text: TEXT_MAX_LENGTH tokens x TEXT_DIM dims (32 x 32), with a [TEXT_MAX_LENGTH] mask

The VAE keeps Wan's 16 latent channels and 4x temporal / 8x spatial compression, so
T' = 1 + (T - 1) / 4 and H' = H / 8 as for the real model. Its `latents_mean`/`latents_std`
are measured on a fixed synthetic batch at build time, the role those numbers play in the real
VAE config, so that normalised demo latents come out roughly unit-scaled.
"""

from __future__ import annotations

import string

import torch

DEMO_NUM_FRAMES = 17
DEMO_HEIGHT = 64
DEMO_WIDTH = 64
DEMO_FPS = 12

VAE_TEMPORAL_FACTOR = 4
VAE_SPATIAL_FACTOR = 8
LATENT_CHANNELS = 16
LATENT_NUM_FRAMES = 1 + (DEMO_NUM_FRAMES - 1) // VAE_TEMPORAL_FACTOR
LATENT_HEIGHT = DEMO_HEIGHT // VAE_SPATIAL_FACTOR
LATENT_WIDTH = DEMO_WIDTH // VAE_SPATIAL_FACTOR
LATENT_SHAPE = (LATENT_CHANNELS, LATENT_NUM_FRAMES, LATENT_HEIGHT, LATENT_WIDTH)

TEXT_MAX_LENGTH = 32
TEXT_DIM = 32

TINY_SEED = 0

# Words of the demo captions (every one is a single token), then generic English filler.
# Anything else is spelt with single-character word pieces, so no text is ever unknown.
TOKENIZER_WORDS = (
    "a an the on in of to from and with is are it its this that at around",
    "small large big tiny red green blue yellow orange purple cyan magenta pink white black grey",
    "gray brown beige navy teal dark light pale bright",
    "square triangle star cross ellipse heart circle shape shapes",
    "moves move moving left right up down upwards downwards spins spinning rotates rotating",
    "clockwise counterclockwise place grows grow larger shrinks shrink smaller circles circling",
    "centre center slowly quickly fast slow steadily",
    "plain gradient checkered striped background backgrounds video clip frame",
)
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5/UMT5


def tiny_vae_config() -> dict:
    """Arguments of `diffusers.AutoencoderKLWan` for the tiny VAE (latent stats set at build)."""
    return {
        "base_dim": 4,
        "z_dim": LATENT_CHANNELS,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "scale_factor_temporal": VAE_TEMPORAL_FACTOR,
        "scale_factor_spatial": VAE_SPATIAL_FACTOR,
    }


def _calibration_clips(seed: int) -> torch.Tensor:
    """Two smooth, deterministic clips [2, 3, 17, 64, 64] in [-1, 1] to measure latent stats."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, 5, 4, 4, generator=gen) * 2 - 1
    shape = (DEMO_NUM_FRAMES, DEMO_HEIGHT, DEMO_WIDTH)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)


def build_tiny_vae(seed: int = TINY_SEED):
    """A seeded, untrained `AutoencoderKLWan` with Wan's latent layout (16 channels, 4x/8x)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**tiny_vae_config()).eval()
    with torch.no_grad():
        z = vae.encode(_calibration_clips(seed)).latent_dist.mode()
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(
        latents_mean=[round(float(v), 4) for v in mean], latents_std=[round(float(v), 4) for v in std]
    )
    return vae


def tiny_text_encoder_config():
    """`transformers.UMT5Config` of the tiny text encoder (d_model = TEXT_DIM)."""
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=len(tokenizer_vocab()),
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=TEXT_MAX_LENGTH,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )


def build_tiny_text_encoder(seed: int = TINY_SEED):
    """A seeded, untrained `UMT5EncoderModel` with d_model = TEXT_DIM."""
    from transformers import UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(tiny_text_encoder_config()).eval()


def tokenizer_vocab() -> dict[str, int]:
    """The fixed vocabulary: specials, demo words, characters and `##` continuation pieces."""
    pieces = list(SPECIAL_TOKENS)
    pieces += " ".join(TOKENIZER_WORDS).split()
    chars = string.ascii_lowercase + string.digits
    pieces += list(chars) + ["##" + c for c in chars] + list(string.punctuation)
    vocab: dict[str, int] = {}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    return vocab


def build_tiny_tokenizer():
    """A lower-casing WordPiece tokenizer over `tokenizer_vocab()` that appends `</s>` like T5."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizer_vocab()
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=64))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    eos = vocab["</s>"]
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TEXT_MAX_LENGTH,
    )
