"""A small VideoMAE classifier and learnable clips for the VideoClassifier tests (no data
pipeline imports, so GPU machines without the video stack can use them)."""

from __future__ import annotations

import torch

from psa_train.modules.video_classifier import TINY_VIDEOMAE_CONFIG, VideoClassifier

PSA = {"block_m": 64, "block_n": 32, "tile_size": [2, 4, 4], "bands": {1: 0.2, 2: 0.1, 4: 0.1, 8: 0.2}}
# 8 frames of 32x32, patch 4 -> a 4 x 8 x 8 grid (256 tokens: 4 query x 8 key blocks).
SMALL = dict(TINY_VIDEOMAE_CONFIG, image_size=32, patch_size=4, num_frames=8, hidden_size=64, intermediate_size=96)


def _clips(n=8, classes=3, seed=0):
    """Learnable synthetic clips: class k is a bright square moving in direction k."""
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(n, 3, 8, 32, 32, generator=g) * 0.2 - 1
    labels = torch.arange(n) % classes
    for i, k in enumerate(labels.tolist()):
        for t in range(8):
            x = 4 + (3 * t if k == 0 else 0)
            y = 4 + (3 * t if k == 1 else 0)
            video[i, :, t, y : y + 6, x : x + 6] = 1.0
    return video, labels


def _model(**kwargs):
    torch.manual_seed(0)
    args = dict(backbone=SMALL, num_classes=3, psa=PSA, lr=2e-3, warmup_steps=0, lr_schedule="constant")
    return VideoClassifier(**{**args, **kwargs})
