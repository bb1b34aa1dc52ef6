"""Pictures people would rather see than read: sample grids and loss curves.

Top level, not under evaluate/: data (previews), train (grids and curves), evaluate and serving
(provenance PNGs) all draw with it, and it needs nothing of medsynth but storage's atomic write.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from medsynth.storage import atomic_write_bytes

SYNTHETIC_LABEL = "SYNTHETIC"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map generator output in [-1, 1] (or uint8 already) to uint8 [n, H, W]."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [n, H, W] (or [n, H, W, 1]) images into one uint8 picture."""
    images = to_uint8(images)
    n, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def png_bytes(image: np.ndarray, text: Mapping[str, str] | None = None, scale: int = 1) -> bytes:
    """Encode a uint8 grey image as PNG, with optional tEXt chunks (provenance, synthetic flag)."""
    img = Image.fromarray(np.asarray(image, np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# Marker colours by key-point class (medsynth.data.keypoints.CLASSES: catheter tip, bifurcation).
KEYPOINT_COLOURS = ((255, 48, 48), (48, 220, 48))


def save_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    synthetic: bool = True,
    cols: int | None = None,
    keypoints: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> str:
    """Write a sample grid PNG; generated grids carry a visible and a metadata synthetic mark.

    `keypoints`: per frame (points [k, 2] in its pixels, pixel centres at integers; classes [k]),
    drawn as rings in colour (KEYPOINT_COLOURS) over the frames, so one sees whether G put the
    catheter tip and the bifurcations where it was asked.
    """
    grid = image_grid(images, cols)
    scale = max(1 if keypoints is None else 2, 512 // max(grid.shape))  # markers need room
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    if keypoints is not None:
        img = _draw_keypoints(img, keypoints, np.asarray(images).shape[1:3], cols or math.ceil(
            math.sqrt(len(images))), scale)
    label = " · ".join(x for x in [SYNTHETIC_LABEL if synthetic else None, title] if x)
    if label:
        canvas = Image.new(img.mode, (img.width, img.height + 14), 0)
        canvas.paste(img, (0, 14))
        # the default font's space is 2 px: doubled, "convnet step 200" does not read as one word
        ImageDraw.Draw(canvas).text((2, 1), label.replace("·", "-").replace(" ", "  "), fill="white")
        img = canvas
    text = {"Software": "medsynth"}
    if synthetic:
        text["medsynth:synthetic"] = "true"
    if title:
        text["Title"] = title
    atomic_write_bytes(path, png_bytes(np.asarray(img), text))
    return str(path)


def _draw_keypoints(
    img: Image.Image, keypoints: Sequence[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int], cols: int,
    scale: int, pad: int = 2,
) -> Image.Image:
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    h, w = shape
    radius = max(2.0, 1.5 * scale)
    for i, (points, classes) in enumerate(keypoints):
        r, c = divmod(i, cols)
        for (x, y), k in zip(np.asarray(points).tolist(), np.asarray(classes).tolist(), strict=True):
            cx = (pad + c * (w + pad) + x + 0.5) * scale
            cy = (pad + r * (h + pad) + y + 0.5) * scale
            big = radius * (1.6 if k == 0 else 1.0)  # the tip's ring larger
            colour = KEYPOINT_COLOURS[int(k) % len(KEYPOINT_COLOURS)]
            draw.ellipse((cx - big, cy - big, cx + big, cy + big), outline=colour)
    return img


def save_curves(
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    steps: Sequence[int] | None = None,
    title: str = "",
    ylabel: str = "",
) -> str:
    """Plot named series (e.g. D and G losses) against steps into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, ys in series.items():
        xs = list(steps) if steps is not None else list(range(len(ys)))
        ax.plot(xs[: len(ys)], ys, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
