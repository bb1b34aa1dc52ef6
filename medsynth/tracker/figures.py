"""The tracker's predictions drawn over frames: truth as green rings, predictions as red crosses
(tip: the larger marks), one tile per frame, so a glance shows what the numbers mean."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from medsynth.data.keypoints import TIP, FramePoints
from medsynth.pictures import SYNTHETIC_LABEL, image_grid, png_bytes
from medsynth.storage import atomic_write_bytes

SCALE = 4  # frames are drawn 4x larger: the marks need room
PAD = 2


def save_predictions(
    images: np.ndarray,
    truth: list[FramePoints],
    pred: list[FramePoints],
    path: str | os.PathLike,
    *,
    title: str = "",
    synthetic: bool = False,
    cols: int = 4,
) -> str:
    """Write a PNG grid of uint8 frames [n, S, S] with their true and predicted key points."""
    images = np.asarray(images, np.uint8)
    n, size = len(images), images.shape[1]
    big = np.repeat(np.repeat(images, SCALE, axis=1), SCALE, axis=2)
    cols = min(cols, max(n, 1))
    grid = Image.fromarray(image_grid(big, cols=cols, pad=PAD)).convert("RGB")
    draw = ImageDraw.Draw(grid)
    side = size * SCALE
    for i in range(n):
        r, c = divmod(i, cols)
        # pixel centre (x, y) → the centre of its SCALE x SCALE block in tile (r, c)
        at = np.array([PAD + c * (side + PAD), PAD + r * (side + PAD)]) + 0.5 * SCALE
        for p, k in zip(truth[i].points, truth[i].classes, strict=True):
            x, y = at + p * SCALE
            rad = 5 if k == TIP else 3
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=(0, 220, 0))
        for p, k in zip(pred[i].points, pred[i].classes, strict=True):
            x, y = at + p * SCALE
            arm = 5 if k == TIP else 3
            draw.line([x - arm, y, x + arm, y], fill=(255, 40, 40))
            draw.line([x, y - arm, x, y + arm], fill=(255, 40, 40))
    label = "  ".join(
        x
        for x in [SYNTHETIC_LABEL if synthetic else None, title, "truth: green rings, predicted: red crosses"]
        if x
    )
    canvas = Image.new("RGB", (grid.width, grid.height + 14), (0, 0, 0))
    canvas.paste(grid, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), label, fill=(255, 255, 255))
    text = {"Software": "medsynth", "Title": title}
    if synthetic:
        text["medsynth:synthetic"] = "true"
    atomic_write_bytes(path, png_bytes(np.asarray(canvas), text))
    return str(path)
