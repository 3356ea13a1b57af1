"""Colour panoptic results, label them (outlines, category names, a legend) and put images side by side (numpy +
Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .categories import CategoryTable
from .structures import PanopticResult

__all__ = [
    "annotate",
    "colorize",
    "overlay",
    "save_png",
    "side_by_side",
    "with_legend",
]

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


#: Pictures smaller than this (long side, pixels) are enlarged (nearest neighbour) before labels are drawn.
LABEL_MIN_SIDE = 384


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_color(rgb: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb``."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _label_anchors(segment_map: np.ndarray, num_segments: int) -> np.ndarray:
    """``(S, 2)`` (y, x) per segment: its pixel nearest its centroid (inside the segment even when it is not convex)."""
    flat = segment_map.ravel()
    w = segment_map.shape[1]
    ys, xs = np.divmod(np.arange(flat.size), w)
    count = np.bincount(flat, minlength=num_segments + 1).astype(np.float64)
    cy = np.bincount(flat, ys, minlength=num_segments + 1) / np.maximum(count, 1)
    cx = np.bincount(flat, xs, minlength=num_segments + 1) / np.maximum(count, 1)
    dist = (ys - cy[flat]) ** 2 + (xs - cx[flat]) ** 2
    order = np.lexsort((dist, flat))  # by segment, then distance
    first = np.searchsorted(flat[order], np.arange(1, num_segments + 1))
    first = np.minimum(first, flat.size - 1)
    idx = order[first]
    return np.stack([ys[idx], xs[idx]], axis=1)


def _enlarge(mask: torch.Tensor, k: int) -> np.ndarray:
    m = mask.cpu().numpy()
    return m.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else m


def legend(table: CategoryTable, category_ids: Sequence[int], width: int, *, unknown: bool = False,
           void: bool = False, scale: int = 1) -> np.ndarray:
    """``(h, width, 3)`` uint8 strip: a colour swatch and the name of each contiguous category id given.

    Args:
        table: Names and colours.
        category_ids: Contiguous ids to list, in this order (duplicates dropped).
        width: Strip width; entries wrap onto more lines.
        unknown: Add UPSNet's *unknown* (white).
        void: Add *void* (black: no segment).
        scale: Text size multiplier.
    """
    entries = [(table.categories[c].name + (" (thing)" if table.isthing(c) else ""), table.categories[c].color)
               for c in dict.fromkeys(int(c) for c in category_ids)]
    if unknown:
        entries.append(("unknown", UNKNOWN_COLOR))
    if void:
        entries.append(("void", VOID_COLOR))
    font = _font(11 * scale)
    line_h, sw, pad = 16 * scale, 11 * scale, 4 * scale
    rows: list[list[tuple[int, str, tuple[int, int, int]]]] = [[]]
    x = pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for name, color in entries:
        need = sw + pad + int(probe.textlength(name, font=font)) + 3 * pad
        if rows[-1] and x + need > width:
            rows.append([])
            x = pad
        rows[-1].append((x, name, color))
        x += need
    canvas = Image.new("RGB", (width, line_h * len(rows) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * line_h
        for x0, name, color in row:
            draw.rectangle((x0, y, x0 + sw, y + sw), fill=tuple(color), outline=(90, 90, 90))
            draw.text((x0 + sw + pad, y - scale), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def annotate(picture: np.ndarray, result: PanopticResult, table: CategoryTable, *, outlines: bool = True,
             labels: bool = True, show_legend: bool = True, void_in_legend: bool = False,
             min_label_area: float = 0.002) -> np.ndarray:
    """Label a coloured picture of ``result`` (e.g. :func:`overlay`) the way detectron2's and mmdet's visualisers do.

    Draws each thing's outline in its category colour, a name tag on every segment of at least
    ``min_label_area`` of the image (things with their score), and a legend strip below the picture with every
    category shown and *unknown* (white) when predicted. Pictures whose long side is under
    :data:`LABEL_MIN_SIDE` are enlarged by an integer factor first so the text stays legible.

    Args:
        picture: ``(H, W, 3)`` uint8, the size of ``result``.
        result: The segmentation.
        table: Names and colours.
        outlines: Draw thing outlines.
        labels: Draw name tags.
        show_legend: Append the legend strip.
        void_in_legend: List *void* (black in :func:`colorize`; :func:`overlay` shows the image there instead).
        min_label_area: Smallest segment (fraction of the image) that gets a tag; smaller ones are in the legend.

    Returns:
        ``(k H + legend, k W, 3)`` uint8 with ``k >= 1`` the enlargement.
    """
    img = np.asarray(picture)
    if img.shape[:2] != result.image_size:
        raise ValueError(f"picture is {img.shape[:2]} but the result is {result.image_size}; resize one to the other.")
    h, w = result.image_size
    k = max(1, -(-LABEL_MIN_SIDE // max(h, w, 1)))
    sm = result.segment_map.cpu().numpy().astype(np.int64)
    if k > 1:
        img = img.repeat(k, axis=0).repeat(k, axis=1)
        sm = sm.repeat(k, axis=0).repeat(k, axis=1)
    out = img.copy()
    cat = result.category.cpu().numpy()
    things = result.isthing.cpu().numpy().astype(bool)
    colors = table.color_tensor().numpy()
    if outlines and things.any():
        _draw_outlines(out, sm, things, np.concatenate([np.zeros((1, 3), np.uint8), colors[cat]]))
    canvas = Image.fromarray(np.ascontiguousarray(out))
    text_scale = max(1, max(canvas.size) // 640)  # 11 px text up to 640 px, larger on large pictures
    if labels and len(cat):
        _draw_tags(canvas, result, table, sm, min_label_area * h * w, _font(11 * text_scale))
    picture_out = np.asarray(canvas)
    if not show_legend:
        return picture_out
    strip = legend(table, [int(c) for c in cat[np.argsort(things, kind="stable")]], picture_out.shape[1],
                   unknown=bool(result.unknown_mask.any()),
                   void=void_in_legend and bool(((sm == 0) & ~_enlarge(result.unknown_mask, k)).any()),
                   scale=text_scale)
    return np.concatenate([picture_out, strip], axis=0)


def _draw_outlines(out: np.ndarray, sm: np.ndarray, things: np.ndarray, seg_color: np.ndarray) -> None:
    """Colour, in place, the pixels of ``out (H, W, 3)`` on a thing segment's border with ``seg_color (S + 1, 3)``."""
    edge = np.zeros(sm.shape, dtype=bool)
    edge[:, 1:] |= sm[:, 1:] != sm[:, :-1]
    edge[:, :-1] |= sm[:, 1:] != sm[:, :-1]
    edge[1:, :] |= sm[1:, :] != sm[:-1, :]
    edge[:-1, :] |= sm[1:, :] != sm[:-1, :]
    edge &= np.concatenate([[False], things])[sm]
    out[edge] = seg_color[sm[edge]]


def _draw_tags(canvas: Image.Image, result: PanopticResult, table: CategoryTable, sm: np.ndarray,
               min_area: float, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    """Draw a name tag (things with their score) on every segment of ``min_area`` pixels or more, largest first."""
    draw = ImageDraw.Draw(canvas)
    cat = result.category.cpu().numpy()
    things = result.isthing.cpu().numpy().astype(bool)
    colors = table.color_tensor().numpy()
    area = result.area.cpu().numpy()
    scores = result.score.cpu().numpy()
    anchors = _label_anchors(sm, len(cat))
    for s in np.argsort(-area, kind="stable"):
        if area[s] < min_area:
            continue
        name = table.categories[int(cat[s])].name
        text = f"{name} {scores[s]:.2f}" if things[s] and np.isfinite(scores[s]) else name
        y, x = (int(v) for v in anchors[s])
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        x0 = min(max(0, x - tw // 2), canvas.width - tw)
        y0 = min(max(0, y - th // 2), canvas.height - th)
        color = tuple(int(v) for v in colors[cat[s]])
        draw.rectangle((x0, y0, x0 + tw, y0 + th), fill=color, outline=(40, 40, 40))
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=_text_color(color), font=font)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = 4,
                 scale: int = 1) -> np.ndarray:
    """Concatenate ``(H, W, 3)`` uint8 panels horizontally with optional titles above them.

    Args:
        panels: The pictures.
        titles: One title per panel.
        gap: White pixels between panels.
        scale: Enlarge every panel by this integer factor first (nearest neighbour), for small images.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel.")
    if scale > 1:
        panels = [np.asarray(p).repeat(scale, axis=0).repeat(scale, axis=1) for p in panels]
    h = max(p.shape[0] for p in panels)
    font = _font(12)
    title_h = 18 if titles else 0
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(np.ascontiguousarray(p, dtype=np.uint8)), (x, title_h))
        if titles:
            draw.text((x + 3, 2), titles[i], fill=(0, 0, 0), font=font)
        x += p.shape[1] + gap
    return np.asarray(canvas)


def with_legend(picture: np.ndarray, table: CategoryTable, results: Sequence[PanopticResult], *,
                void: bool = True) -> np.ndarray:
    """``picture`` with a :func:`legend` strip below it for the categories in ``results`` (stuff, then things),
    plus *unknown* (white) when one of them predicts it and *void* (black)."""
    present = sorted({int(c) for r in results for c in r.category.tolist()}, key=lambda c: (table.isthing(c), c))
    unknown = any(bool(r.unknown_mask.any()) for r in results)
    strip = legend(table, present, picture.shape[1], unknown=unknown, void=void)
    return np.concatenate([np.asarray(picture, dtype=np.uint8), strip], axis=0)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image atomically (:func:`~panoptic.atomic.atomic_write`), creating parent folders."""
    from .atomic import atomic_write

    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))
