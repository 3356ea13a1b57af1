"""Colour panoptic results and put images side by side (numpy + Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .categories import CategoryTable
from .structures import PanopticResult

__all__ = ["UNKNOWN_COLOR", "VOID_COLOR", "colorize", "overlay", "save_png", "side_by_side"]

VOID_COLOR = (0, 0, 0)
UNKNOWN_COLOR = (255, 255, 255)


def colorize(result: PanopticResult, table: CategoryTable, boundaries: bool = True) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of a result.

    Stuff takes its category colour; each thing takes its category colour shaded per instance (so
    instances of one class stay recognisable and distinct); void is black, predicted unknown white,
    and segment boundaries are drawn dark.
    """
    colors = table.color_tensor().numpy().astype(np.int16)
    cat = result.category.cpu().numpy()
    seg_colors = colors[cat] if len(cat) else np.zeros((0, 3), np.int16)
    things = result.isthing.cpu().numpy()
    # Per-instance shade: alternate lighter/darker steps, deterministic in segment order.
    rank = np.zeros(len(cat), dtype=np.int64)
    counts: dict[int, int] = {}
    for k, (c, t) in enumerate(zip(cat.tolist(), things.tolist())):
        if t:
            counts[c] = counts.get(c, 0) + 1
            rank[k] = counts[c]
    shade = np.where(rank % 2 == 0, 1, -1) * ((rank + 1) // 2) * 28
    seg_colors = np.clip(seg_colors + np.where(things[:, None], shade[:, None], 0), 0, 255)
    lut = np.concatenate([np.array([VOID_COLOR], np.int16), seg_colors]).astype(np.uint8)
    sm = result.segment_map.cpu().numpy()
    out = lut[sm]
    out[result.unknown_mask.cpu().numpy()] = UNKNOWN_COLOR
    if boundaries and sm.size:
        edge = np.zeros(sm.shape, dtype=bool)
        edge[:, 1:] |= sm[:, 1:] != sm[:, :-1]
        edge[1:, :] |= sm[1:, :] != sm[:-1, :]
        out[edge] = (out[edge] * 0.35).astype(np.uint8)
    return out


def overlay(image: np.ndarray | torch.Tensor, result: PanopticResult, table: CategoryTable,
            alpha: float = 0.55) -> np.ndarray:
    """Blend :func:`colorize` over an ``(H, W, 3)`` uint8 image (void pixels show the image)."""
    img = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.shape[:2] != result.image_size:
        raise ValueError(f"image is {img.shape[:2]} but the result is {result.image_size}; resize one to the other.")
    col = colorize(result, table).astype(np.float32)
    keep = (result.segment_map.cpu().numpy() == 0) & ~result.unknown_mask.cpu().numpy()
    out = img.astype(np.float32) * (1 - alpha) + col * alpha
    out[keep] = img[keep]
    return out.clip(0, 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Concatenate ``(H, W, 3)`` uint8 panels horizontally with optional titles above them."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel.")
    h = max(p.shape[0] for p in panels)
    title_h = 16 if titles else 0
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(np.ascontiguousarray(p, dtype=np.uint8)), (x, title_h))
        if titles:
            draw.text((x + 3, 2), titles[i], fill=(0, 0, 0))
        x += p.shape[1] + gap
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image atomically (:func:`~panoptic.atomic.atomic_write`), creating parent folders."""
    from .atomic import atomic_write

    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))
