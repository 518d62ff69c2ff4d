"""A picture of the pyramid: one head's level map as a PNG heatmap with a legend (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# One colour scale from nothing (skipped) to full resolution.
LEVEL_COLOURS = {
    0: (24, 24, 36),
    8: (59, 82, 139),
    4: (33, 145, 140),
    2: (94, 201, 98),
    1: (253, 231, 37),
}
LEVEL_NAMES = {0: "skipped", 8: "8x pooled", 4: "4x pooled", 2: "2x pooled", 1: "full"}


def render_level_map(levels: torch.Tensor, *, target_size: int = 768) -> Image.Image:
    """levels [nQ, nK] in {0, 1, 2, 4, 8} → RGB image: rows are query blocks, columns key blocks."""
    if levels.dim() != 2:
        raise ValueError(f"levels must be [query blocks, key blocks], got shape {tuple(levels.shape)}")
    grid = levels.detach().to("cpu", torch.int64).numpy()
    pixels = np.zeros((*grid.shape, 3), dtype=np.uint8)
    for level, colour in LEVEL_COLOURS.items():
        pixels[grid == level] = colour
    cell = max(1, target_size // max(grid.shape))
    heatmap = Image.fromarray(pixels).resize((grid.shape[1] * cell, grid.shape[0] * cell), Image.NEAREST)

    legend_height = 28
    canvas = Image.new("RGB", (max(heatmap.width, 420), heatmap.height + legend_height), (255, 255, 255))
    canvas.paste(heatmap, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 4
    for level in (0, 8, 4, 2, 1):
        top = heatmap.height + 8
        draw.rectangle([x, top, x + 12, top + 12], fill=LEVEL_COLOURS[level], outline=(0, 0, 0))
        draw.text((x + 16, top), LEVEL_NAMES[level], fill=(0, 0, 0))
        x += 16 + 7 * len(LEVEL_NAMES[level]) + 12
    return canvas


def save_level_map(levels: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_level_map(levels).save(path)
    return path
