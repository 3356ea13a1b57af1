"""Vectorized numpy rasterizers for the synthetic scenes: shape masks, noise fields and stuff textures.

Everything works on whole arrays (no Python loop over pixels) and draws its randomness from the
``numpy.random.Generator`` it is given, so a scene is a pure function of the generator's state.
Pixel ``(y, x)`` has its centre at ``(y + 0.5, x + 0.5)``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

SHAPES = ("disc", "square", "triangle", "star")
TEXTURES = ("gradient", "grass", "asphalt", "brick")


def hsv_color(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each in ``[0, 1]``, hue wraps) -> ``(3,)`` float32 RGB in ``[0, 255]``."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise: a ``(cells + 1)^2`` grid of standard normals, bilinearly upsampled.

    Args:
        rng: Random generator.
        shape: ``(H, W)`` output size.
        cells: Number of grid cells along each side (>= 1); larger means finer blobs.

    Returns:
        ``(H, W)`` float32 field with values roughly ``N(0, 1)`` at the grid nodes.
    """
    h, w = shape
    cells = max(1, int(cells))
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) * (cells / h)
    xs = (np.arange(w, dtype=np.float32) + 0.5) * (cells / w)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def shape_window(size: tuple[int, int], cy: float, cx: float,
                 extent: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """The image window ``[cy - extent, cy + extent] x [cx - extent, cx + extent]`` clipped to the image.

    Args:
        size: ``(H, W)`` of the image.
        cy: Centre row (pixel units, may lie outside the image).
        cx: Centre column.
        extent: Half side of the window in pixels.

    Returns:
        ``(rows, cols, dy, dx)``: the window slices and pixel-centre offsets from the centre,
        ``dy (h, 1)`` and ``dx (1, w)`` float32; ``None`` if the window misses the image.
    """
    h, w = size
    y0, y1 = max(0, math.floor(cy - extent)), min(h, math.ceil(cy + extent) + 1)
    x0, x1 = max(0, math.floor(cx - extent)), min(w, math.ceil(cx + extent) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    return slice(y0, y1), slice(x0, x1), dy, dx


def shape_mask(kind: str, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float = 0.0,
               aspect: float = 1.0) -> np.ndarray:
    """Rasterize one shape centred at offset ``(0, 0)``.

    Args:
        kind: One of :data:`SHAPES`: ``"disc"`` (ellipse), ``"square"`` (rectangle), ``"triangle"``
            (equilateral), ``"star"`` (five points).
        dy: ``(h, 1)`` row offsets of pixel centres from the shape centre.
        dx: ``(1, w)`` column offsets.
        radius: Size in pixels (circumradius for the polygons, radius for the disc).
        angle: Rotation in radians.
        aspect: Width/height stretch for the disc and square (1 = round / square).

    Returns:
        ``(h, w)`` bool mask.
    """
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    a = math.sqrt(aspect)
    if kind == "disc":
        return (u / (radius * a)) ** 2 + (v / (radius / a)) ** 2 <= 1.0
    if kind == "square":
        half = 0.85 * radius
        return (np.abs(u) <= half * a) & (np.abs(v) <= half / a)
    if kind == "triangle":
        r = 1.15 * radius
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for k in range(3):
            phi = -math.pi / 2 + 2 * math.pi * k / 3
            inside &= math.cos(phi) * u + math.sin(phi) * v <= r / 2  # inradius = circumradius / 2
        return inside
    if kind == "star":
        outer, inner = 1.15 * radius, 0.5 * radius
        sector = 2 * math.pi / 5
        rho = np.sqrt(u * u + v * v)
        # Fold the angle onto [0, pi/5], the angle to the nearest tip; one edge then bounds the point.
        fold = np.abs(np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2)
        px, py = rho * np.cos(fold), rho * np.sin(fold)
        ex, ey = inner * math.cos(sector / 2) - outer, inner * math.sin(sector / 2)  # tip -> inner vertex
        return ex * py - ey * (px - outer) >= 0
    raise ValueError(f"unknown shape {kind!r}; use one of {SHAPES}.")


def texture(kind: str, rng: np.random.Generator, shape: tuple[int, int], color: np.ndarray) -> np.ndarray:
    """A stuff texture around a base colour.

    Args:
        kind: One of :data:`TEXTURES`: ``"gradient"`` (smooth vertical gradient, sky),
            ``"grass"`` (strong fine and blotchy noise), ``"asphalt"`` (fine noise with bright
            speckles), ``"brick"`` (staggered bricks with light mortar lines).
        rng: Random generator.
        shape: ``(H, W)``.
        color: ``(3,)`` base RGB in ``[0, 255]``.

    Returns:
        ``(H, W, 3)`` float32 RGB, not clipped.
    """
    h, w = shape
    side = min(h, w)
    base = np.broadcast_to(color.astype(np.float32), (h, w, 3))
    if kind == "gradient":
        ramp = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None, None] * rng.uniform(12, 30)
        blotch = smooth_noise(rng, shape, 3)[..., None] * 5.0
        return base + ramp + blotch
    if kind == "grass":
        fine = rng.standard_normal((h, w, 1), dtype=np.float32) * 16.0
        blotch = smooth_noise(rng, shape, max(2, side // 24))[..., None] * 14.0
        return base * (1.0 + blotch / 100.0) + fine * np.array([0.6, 1.0, 0.4], dtype=np.float32)
    if kind == "asphalt":
        fine = rng.standard_normal((h, w, 1), dtype=np.float32) * 7.0
        speckle = (rng.random((h, w, 1), dtype=np.float32) < 0.02) * 45.0
        return base + fine + speckle + smooth_noise(rng, shape, 4)[..., None] * 4.0
    if kind == "brick":
        bh = max(4, side // 16)
        bw = 2 * bh
        mortar_w = max(1, bh // 5)
        ys = np.arange(h)[:, None]
        xs = np.arange(w)[None, :]
        row = ys // bh
        shifted = xs + (row % 2) * (bw // 2) + int(rng.integers(0, bw))
        col = shifted // bw
        shade = rng.uniform(-18, 18, size=(h // bh + 2, (w + 2 * bw) // bw + 2)).astype(np.float32)
        value = shade[row, col][..., None]
        mortar = ((ys % bh) < mortar_w) | ((shifted % bw) < mortar_w)
        img = base + value + rng.standard_normal((h, w, 1), dtype=np.float32) * 4.0
        return np.where(mortar[..., None], np.float32(215.0), img)
    raise ValueError(f"unknown texture {kind!r}; use one of {TEXTURES}.")
