"""A deterministic generator of small panoptic scenes that a small CNN can learn on 2 CPU cores.

A scene is a partition of the image into 2-4 large textured **stuff** regions (sky, grass, road,
wall; each with its own colour statistics and texture), on which **things** (disc, square,
triangle, star; each class with its own hue range, instances differ in colour, size, rotation and
shading) are painted in order, so later objects occlude earlier ones. Some scenes hold a **crowd**
(a cluster of small same-class objects labelled as one ``iscrowd`` segment) and some **void**
(a thin unlabeled border band, and clutter blobs). Things that end up less than
``min_visible_fraction`` visible are labelled void, as heavily occluded objects often are in COCO.

Three optional features (off by default; the ``"table6"`` entry of :data:`SCENE_PRESETS` turns them on) give
each rule of the paper's Table 6 something to change: **stuff patches** (thing-shaped patches painted with the
surrounding stuff's texture, darker, and labelled as that stuff: a detector fires on the shape, the semantics
say stuff), **same-class pairs** (a second thing of the same class overlapping the first: duplicates to prune)
and **thin** things (strongly elongated, easily missed or half-segmented: pixels for the unknown class).
A fourth, **decoy patches** (off in every preset but ``"table6_decoys"``), stands for pictures of objects that belong
to the surface they are on (a poster or painting on a wall, a print on the road): a thing class's shape, a colour
from its hue range and its smooth shading, but printed: a fine 1-px checker no real thing has, with the surrounding
stuff's own fine detail showing through; labelled as that stuff. Coarsely they look like things, only the fine
texture says stuff, which is the case the instance class assignment (ICA) rule is for.

Example:
    >>> import numpy as np
    >>> scene = generate_scene(np.random.default_rng(0), 64)
    >>> scene.image.shape, scene.image.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> scene.panoptic.validate(scene.table)
"""

# Over 500 lines: one public recipe (catalogue, painters, scene, dataset writer) around a private canvas; the
# writer calls generate_scene and is documented here, so moving it out would only re-export it back.

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..categories import Category, CategoryTable
from ..segments import assemble_result
from ..structures import PanopticResult
from .drawing import hsv_color, shape_mask, shape_window, smooth_noise, texture
from .targets import IGNORE_INDEX, thing_targets
from .writer import CocoPanopticWriter, encode_png

__all__ = ["SceneConfig", "generate_scene", "synthetic_categories", "write_synthetic_dataset"]


@dataclass(frozen=True)
class _Style:
    """Appearance of one category: HSV ranges and a shape (things) or a texture (stuff)."""

    hue: tuple[float, float]
    sat: tuple[float, float]
    val: tuple[float, float]
    pattern: str


# name -> (dataset id, isthing, display colour, style). Ids are COCO-like: non-contiguous, things low.
_CATALOG: dict[str, tuple[int, bool, tuple[int, int, int], _Style]] = {
    "disc": (1, True, (220, 40, 40), _Style((-0.03, 0.03), (0.65, 1.0), (0.6, 1.0), "disc")),
    "square": (3, True, (40, 80, 220), _Style((0.6, 0.68), (0.6, 1.0), (0.45, 0.95), "square")),
    "triangle": (5, True, (235, 200, 30), _Style((0.12, 0.18), (0.6, 1.0), (0.75, 1.0), "triangle")),
    "star": (8, True, (200, 40, 200), _Style((0.78, 0.88), (0.5, 0.95), (0.55, 1.0), "star")),
    "sky": (119, False, (135, 190, 235), _Style((0.54, 0.6), (0.2, 0.45), (0.8, 0.95), "gradient")),
    "grass": (125, False, (60, 150, 60), _Style((0.25, 0.36), (0.45, 0.75), (0.35, 0.65), "grass")),
    "road": (149, False, (90, 90, 90), _Style((0.0, 1.0), (0.0, 0.08), (0.3, 0.5), "asphalt")),
    "wall": (171, False, (190, 160, 120), _Style((0.07, 0.1), (0.2, 0.4), (0.55, 0.75), "brick")),
}


def synthetic_categories() -> CategoryTable:
    """The synthetic categories: 4 stuff (sky, grass, road, wall), 4 things (disc, square, triangle, star).

    Dataset ids are non-contiguous, as in COCO (things 1, 3, 5, 8; stuff 119, 125, 149, 171).

    Example:
        >>> synthetic_categories().names
        ('sky', 'grass', 'road', 'wall', 'disc', 'square', 'triangle', 'star')
    """
    return CategoryTable([Category(i, name, thing, color) for name, (i, thing, color, _) in _CATALOG.items()])


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of :func:`generate_scene`; sizes are fractions of the image's short side.

    Attributes:
        num_things: Inclusive range of individually labelled things per scene.
        thing_radius: Range of a thing's radius.
        stuff_regions: Inclusive range of stuff categories per scene (each is one region).
        crowd_prob: Probability that a scene holds one crowd.
        crowd_size: Inclusive range of objects in a crowd.
        crowd_radius: Range of a crowd object's radius.
        void_border_prob: Probability of an unlabeled border band (1-4 px at 256).
        void_blob_prob: Probability of 1-2 unlabeled clutter blobs.
        min_visible_fraction: Things less visible than this (of their in-image area) become void.
        noise: Standard deviation of the per-pixel sensor noise, in 0..255 units.
        stuff_patches: Inclusive range of thing-shaped patches per scene painted inside a stuff region with
            that region's texture (darker) and labelled as that stuff.
        same_class_prob: Probability that a thing gets a partner of the same class overlapping it (its
            centre 0.3-0.7 radii away), painted right after it.
        thin_prob: Probability that a thing is thin: stretched to an aspect ratio of 4-7 (discs and squares;
            triangles and stars are shrunk to half size instead).
        decoy_patches: Inclusive range of decoy patches per scene (pictures of things on a stuff surface): a
            thing class's shape, hue range and shading, overlaid with a fine 1-px checker and the surrounding
            stuff's fine detail, painted inside a stuff region and labelled as that stuff.
    """

    num_things: tuple[int, int] = (3, 8)
    thing_radius: tuple[float, float] = (0.07, 0.2)
    stuff_regions: tuple[int, int] = (2, 4)
    crowd_prob: float = 0.35
    crowd_size: tuple[int, int] = (5, 10)
    crowd_radius: tuple[float, float] = (0.03, 0.055)
    void_border_prob: float = 0.5
    void_blob_prob: float = 0.35
    min_visible_fraction: float = 0.1
    noise: float = 3.0
    stuff_patches: tuple[int, int] = (0, 0)
    same_class_prob: float = 0.0
    thin_prob: float = 0.0
    decoy_patches: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        for name in ("crowd_prob", "void_border_prob", "void_blob_prob", "same_class_prob", "thin_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} is a probability in [0, 1], got {getattr(self, name)}.")
        for name in ("stuff_patches", "decoy_patches"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SceneConfig.{name} is an inclusive range (lo, hi) with 0 <= lo <= hi, "
                                 f"got {getattr(self, name)}.")


SCENE_PRESETS: dict[str, SceneConfig] = {
    "plain": SceneConfig(),
    "table6": SceneConfig(stuff_patches=(1, 3), same_class_prob=0.3, thin_prob=0.25),
    "table6_decoys": SceneConfig(stuff_patches=(1, 3), same_class_prob=0.3, thin_prob=0.25, decoy_patches=(1, 2)),
}
"""Named scene configurations: ``"plain"`` (the defaults), ``"table6"`` (stuff patches, same-class pairs
and thin things on, so every row of Table 6 has something to change; ``panoptic compare``'s default) and
``"table6_decoys"`` (``"table6"`` plus 1-2 decoy patches per scene, for the ICA row)."""


@dataclass
class SyntheticScene:
    """One generated scene and its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        panoptic: Ground truth: stuff, crowd and thing segments (in that order), ``iscrowd`` set,
            NaN scores, source -1. Void pixels are 0.
        masks: ``(N, H, W)`` bool visible masks of the non-crowd things (= their panoptic segments).
        amodal_masks: ``(N, H, W)`` bool full (unoccluded) shapes of the same things, clipped to the image.
        boxes: ``(N, 4)`` float32 pixel-edge ``x1, y1, x2, y2`` of the visible masks.
        labels: ``(N,)`` int64 thing index (contiguous id minus ``num_stuff``).
        segment_ids: ``(N,)`` int64 segment id of each thing in ``panoptic.segment_map``.
        table: The category table the contiguous ids refer to.
        thin: ``(N,)`` bool, which things were drawn thin (``SceneConfig.thin_prob``).
        stuff_patch_masks: ``(P, H, W)`` bool visible pixels of each stuff patch (``SceneConfig.stuff_patches``,
            then ``SceneConfig.decoy_patches``); they belong to the stuff segment around them.
    """

    image: np.ndarray
    panoptic: PanopticResult
    masks: torch.Tensor
    amodal_masks: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    segment_ids: torch.Tensor
    table: CategoryTable
    thin: torch.Tensor
    stuff_patch_masks: torch.Tensor

    @property
    def semantic(self) -> torch.Tensor:
        """``(H, W)`` int64 contiguous ids, 255 = void; crowd keeps its class."""
        return self.panoptic.semantic_map(void=IGNORE_INDEX).long()


class _Canvas:
    """The image being painted plus the candidate-index label map and its segment table."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.image = np.zeros((*size, 3), dtype=np.float32)
        self.labels = np.full(size, -1, dtype=np.int64)
        self.category: list[int] = []
        self.isthing: list[bool] = []
        self.iscrowd: list[bool] = []
        self.patches: list[np.ndarray] = []  # (H, W) bool full-image masks of the stuff patches

    def new_segment(self, category: int, isthing: bool, iscrowd: bool = False) -> int:
        self.category.append(category)
        self.isthing.append(isthing)
        self.iscrowd.append(iscrowd)
        return len(self.category) - 1


def _sample_color(rng: np.random.Generator, style: _Style) -> np.ndarray:
    return hsv_color(rng.uniform(*style.hue), rng.uniform(*style.sat), rng.uniform(*style.val))


def _paint_stuff(rng: np.random.Generator, canvas: _Canvas, table: CategoryTable, styles: list[_Style],
                 cfg: SceneConfig) -> None:
    """Partition the image into domain-warped Voronoi regions, one per sampled stuff category."""
    h, w = canvas.size
    side = min(h, w)
    stuff = [k for k in range(table.num_classes) if not table.isthing(k)]
    lo, hi = cfg.stuff_regions
    k = int(rng.integers(min(lo, len(stuff)), min(hi, len(stuff)) + 1))
    chosen = rng.choice(len(stuff), size=k, replace=False)
    centres = rng.uniform(0.0, 1.0, size=(k, 2)) * np.array([h, w])
    # Warp the pixel coordinates with smooth noise, so region borders are wavy rather than straight.
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5 + smooth_noise(rng, (h, w), 3) * 0.15 * side
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5 + smooth_noise(rng, (h, w), 3) * 0.15 * side
    dist = np.stack([(ys - cy) ** 2 + (xs - cx) ** 2 for cy, cx in centres.astype(np.float32)])
    region = np.argmin(dist, axis=0)
    for r, idx in enumerate(chosen):
        cat = stuff[int(idx)]
        style = styles[cat]
        color = _sample_color(rng, style)
        inside = region == r
        rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
        if not len(rows):
            continue
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        tex = texture(style.pattern, rng, (len(range(h)[box[0]]), len(range(w)[box[1]])), color)
        crop = inside[box]
        canvas.image[box][crop] = tex[crop]
        canvas.labels[box][crop] = canvas.new_segment(cat, False)


def _paint_object(rng: np.random.Generator, canvas: _Canvas, style: _Style, cy: float, cx: float,
                  radius: float, segment: int, thin: bool = False) -> np.ndarray:
    """Paint one shaded shape; return its ``(H, W)`` bool full (amodal, in-image) mask."""
    full = np.zeros(canvas.size, dtype=bool)
    angle = float(rng.uniform(0.0, 2 * math.pi))
    aspect = float(rng.uniform(0.75, 1.33))
    if thin:  # a sliver: discs and squares stretch, the polygons (no aspect) shrink
        if style.pattern in ("disc", "square"):
            aspect = float(rng.uniform(4.0, 7.0))
        else:
            radius *= 0.5
    color = _sample_color(rng, style)
    shade_dir = rng.uniform(0.0, 2 * math.pi)
    shade_amp = rng.uniform(0.05, 0.25)
    window = shape_window(canvas.size, cy, cx, 1.5 * radius * (math.sqrt(aspect) if thin else 1.0))
    if window is None:
        return full
    rows, cols, dy, dx = window
    mask = shape_mask(style.pattern, dy, dx, radius, angle, aspect)
    shade = 1.0 + shade_amp * (math.cos(shade_dir) * dx + math.sin(shade_dir) * dy) / radius
    patch = color * shade[..., None]
    canvas.image[rows, cols][mask] = patch[mask]
    canvas.labels[rows, cols][mask] = segment
    full[rows, cols] = mask
    return full


def _patch_place(rng: np.random.Generator, canvas: _Canvas, styles: list[_Style], things: list[int],
                 cfg: SceneConfig) -> tuple[int, slice, slice, np.ndarray, np.ndarray, np.ndarray, int] | None:
    """Where a patch inside stuff goes: ``(stuff segment, rows, cols, dy, dx, mask, thing class)``, the mask a random
    thing class's shape clipped to the stuff region under its centre; ``None`` if the centre is not on stuff."""
    h, w = canvas.size
    side = min(h, w)
    cy, cx = rng.uniform(0.1, 0.9, size=2) * np.array([h, w])
    seg = int(canvas.labels[int(cy), int(cx)])
    if seg < 0 or canvas.isthing[seg]:
        return None
    radius = rng.uniform(*cfg.thing_radius) * side
    window = shape_window(canvas.size, cy, cx, 1.5 * radius)
    if window is None:
        return None
    rows, cols, dy, dx = window
    thing = things[int(rng.integers(len(things)))]
    kind = styles[thing].pattern
    mask = shape_mask(kind, dy, dx, radius, float(rng.uniform(0.0, 2 * math.pi)), float(rng.uniform(0.75, 1.33)))
    mask &= canvas.labels[rows, cols] == seg  # stays inside its stuff region
    return seg, rows, cols, dy, dx, mask, thing


def _record_patch(canvas: _Canvas, rows: slice, cols: slice, mask: np.ndarray) -> None:
    full = np.zeros(canvas.size, dtype=bool)
    full[rows, cols] = mask
    canvas.patches.append(full)


def _paint_stuff_patches(rng: np.random.Generator, canvas: _Canvas, styles: list[_Style], things: list[int],
                         cfg: SceneConfig) -> None:
    """Thing-shaped patches inside stuff: the shape of a random thing class, the texture of the stuff under
    its centre (darker), labelled as that stuff. Patches are painted before the things, so things occlude them."""
    if cfg.stuff_patches[1] == 0:  # off: no draw, so scenes without patches stay byte-identical
        return
    for _ in range(int(rng.integers(cfg.stuff_patches[0], cfg.stuff_patches[1] + 1))):
        place = _patch_place(rng, canvas, styles, things, cfg)
        if place is None:
            continue
        seg, rows, cols, _, _, mask, _ = place
        style = styles[canvas.category[seg]]
        tex = texture(style.pattern, rng, mask.shape, _sample_color(rng, style)) * rng.uniform(0.55, 0.75)
        canvas.image[rows, cols][mask] = tex[mask]
        _record_patch(canvas, rows, cols, mask)


def _paint_decoy_patches(rng: np.random.Generator, canvas: _Canvas, styles: list[_Style], things: list[int],
                         cfg: SceneConfig) -> None:
    """Pictures of things on a stuff surface: a random thing class's shape, a colour from its hue range and its
    smooth shading (coarsely a thing), printed: a fine 1-px checker (+-15 %) no real thing has, plus the stuff's
    own fine detail (its texture minus its base colour, at half strength) showing through. Labelled as the stuff
    under the centre and recorded with the stuff patches; painted before the things, so things occlude them."""
    if cfg.decoy_patches[1] == 0:  # off: no draw, so scenes without decoys stay byte-identical
        return
    for _ in range(int(rng.integers(cfg.decoy_patches[0], cfg.decoy_patches[1] + 1))):
        place = _patch_place(rng, canvas, styles, things, cfg)
        if place is None:
            continue
        seg, rows, cols, dy, dx, mask, thing = place
        radius = max(1.0, float(np.sqrt(mask.sum() / math.pi)))
        shade_dir = rng.uniform(0.0, 2 * math.pi)
        shade = 1.0 + rng.uniform(0.05, 0.25) * (math.cos(shade_dir) * dx + math.sin(shade_dir) * dy) / radius
        ys = np.arange(rows.start, rows.stop)[:, None]
        xs = np.arange(cols.start, cols.stop)[None, :]
        checker = np.where((ys + xs) % 2 == 0, np.float32(1.15), np.float32(0.85))
        picture = _sample_color(rng, styles[thing]) * (shade * checker)[..., None]
        stuff = styles[canvas.category[seg]]
        color = _sample_color(rng, stuff)
        detail = texture(stuff.pattern, rng, mask.shape, color) - color
        canvas.image[rows, cols][mask] = (picture + 0.5 * detail)[mask]
        _record_patch(canvas, rows, cols, mask)


def _paint_void_blobs(rng: np.random.Generator, canvas: _Canvas) -> None:
    """Irregular clutter blobs, labelled void."""
    h, w = canvas.size
    side = min(h, w)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(0.04, 0.09) * side
        window = shape_window(canvas.size, cy, cx, 1.4 * radius)
        if window is None:
            continue
        rows, cols, dy, dx = window
        theta = np.arctan2(dy, dx)
        wobble = 1.0 + 0.3 * np.sin(int(rng.integers(2, 6)) * theta + rng.uniform(0, 2 * math.pi))
        mask = np.hypot(dy, dx) <= radius * wobble
        clutter = hsv_color(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.8))
        noise = rng.standard_normal((*mask.shape, 3), dtype=np.float32) * 25.0
        canvas.image[rows, cols][mask] = (clutter + noise)[mask]
        canvas.labels[rows, cols][mask] = -1


def _paint_crowd(rng: np.random.Generator, canvas: _Canvas, category: int, style: _Style,
                 cfg: SceneConfig) -> None:
    """A cluster of small same-class objects, labelled as one ``iscrowd`` segment."""
    side = min(canvas.size)
    seg = canvas.new_segment(category, True, iscrowd=True)
    cy, cx = rng.uniform(0.15, 0.85, size=2) * np.array(canvas.size)
    for _ in range(int(rng.integers(cfg.crowd_size[0], cfg.crowd_size[1] + 1))):
        oy, ox = rng.normal(0.0, 0.08 * side, size=2)
        radius = rng.uniform(*cfg.crowd_radius) * side
        _paint_object(rng, canvas, style, cy + oy, cx + ox, radius, seg)


def generate_scene(rng: np.random.Generator, size: int | tuple[int, int], table: CategoryTable | None = None,
                   config: SceneConfig | None = None) -> SyntheticScene:
    """Generate one scene; a pure function of ``rng``'s state, ``size``, ``table`` and ``config``.

    Args:
        rng: Random generator, e.g. ``numpy.random.default_rng(seed)``.
        size: ``S`` for an ``S x S`` image or ``(H, W)``.
        table: Category table whose names are a subset of :func:`synthetic_categories` (with at
            least one stuff and one thing category); defaults to the full synthetic table.
        config: Generation knobs, :class:`SceneConfig` defaults when ``None``.

    Returns:
        The image and its ground truth. Segments with no visible pixel are left out.

    Raises:
        ValueError: On a table with unknown names or no stuff/thing, or a size below 16.
    """
    cfg = config or SceneConfig()
    table = table or synthetic_categories()
    hw = _scene_size(size, table)
    styles = [_CATALOG[n][3] for n in table.names]
    side = min(hw)
    canvas = _Canvas(hw)

    _paint_stuff(rng, canvas, table, styles, cfg)
    if rng.random() < cfg.void_blob_prob:
        _paint_void_blobs(rng, canvas)
    things = list(range(table.num_stuff, table.num_classes))
    if rng.random() < cfg.crowd_prob:
        cat = things[int(rng.integers(len(things)))]
        _paint_crowd(rng, canvas, cat, styles[cat], cfg)
    amodal: list[np.ndarray] = []
    thing_segments: list[int] = []
    thin_of: list[bool] = []
    _paint_stuff_patches(rng, canvas, styles, things, cfg)  # each draws nothing when its feature is off
    _paint_decoy_patches(rng, canvas, styles, things, cfg)
    for _ in range(int(rng.integers(cfg.num_things[0], cfg.num_things[1] + 1))):
        cat = things[int(rng.integers(len(things)))]
        cy, cx = rng.uniform(0.05, 0.95, size=2) * np.array(hw)
        radius = rng.uniform(*cfg.thing_radius) * side
        # The optional draws happen only when their feature is on, so the plain scenes stay byte-identical.
        thin = cfg.thin_prob > 0 and bool(rng.random() < cfg.thin_prob)
        places = [(cy, cx)]
        if cfg.same_class_prob > 0 and rng.random() < cfg.same_class_prob:
            off, phi = rng.uniform(0.3, 0.7) * radius, rng.uniform(0.0, 2 * math.pi)
            places.append((cy + off * math.sin(phi), cx + off * math.cos(phi)))
        for py, px in places:
            seg = canvas.new_segment(cat, True)
            amodal.append(_paint_object(rng, canvas, styles[cat], py, px, radius, seg, thin))
            thing_segments.append(seg)
            thin_of.append(thin)
    if cfg.noise > 0:
        canvas.image += rng.standard_normal(canvas.image.shape, dtype=np.float32) * cfg.noise
    if rng.random() < cfg.void_border_prob:
        band = int(rng.integers(1, max(1, side // 64) + 1))
        canvas.labels[:band], canvas.labels[-band:] = -1, -1
        canvas.labels[:, :band], canvas.labels[:, -band:] = -1, -1
    _void_occluded(canvas, thing_segments, amodal, cfg.min_visible_fraction)
    return _finish(canvas, table, thing_segments, amodal, thin_of)


def _scene_size(size: int | tuple[int, int], table: CategoryTable) -> tuple[int, int]:
    """``(H, W)`` of a scene; a ``ValueError`` for a size below 16 or a table of non-synthetic categories."""
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(hw) < 16:
        raise ValueError(f"scene size {hw} is too small; use at least 16x16.")
    unknown = [n for n in table.names if n not in _CATALOG]
    if unknown or table.num_stuff == 0 or table.num_things == 0:
        raise ValueError(f"generate_scene needs a table of synthetic categories {list(_CATALOG)} with at "
                         f"least one stuff and one thing; got {list(table.names)}. Use "
                         "synthetic_categories().")
    return hw


def _void_occluded(canvas: _Canvas, thing_segments: Sequence[int], amodal: Sequence[np.ndarray],
                   min_visible_fraction: float) -> None:
    """Heavily occluded things become void (their few visible pixels are not worth a segment)."""
    counts = np.bincount(canvas.labels.reshape(-1) + 1, minlength=len(canvas.category) + 1)[1:]
    for seg, full in zip(thing_segments, amodal, strict=True):
        if counts[seg] and counts[seg] < min_visible_fraction * full.sum():
            canvas.labels[canvas.labels == seg] = -1


def _finish(canvas: _Canvas, table: CategoryTable, thing_segments: Sequence[int],
            amodal: Sequence[np.ndarray], thin: Sequence[bool]) -> SyntheticScene:
    """Assemble the ground truth and per-thing targets from the painted canvas."""
    k = len(canvas.category)
    panoptic = assemble_result(
        torch.from_numpy(canvas.labels), torch.tensor(canvas.category, dtype=torch.int64),
        torch.tensor(canvas.isthing, dtype=torch.bool), torch.full((k,), float("nan")),
        torch.full((k,), -1, dtype=torch.int64), iscrowd=torch.tensor(canvas.iscrowd, dtype=torch.bool))
    masks, boxes, labels, seg_ids = thing_targets(panoptic, table)
    # Candidate j survives as segment (number of surviving candidates up to j); map things back to it.
    counts = np.bincount(canvas.labels.reshape(-1) + 1, minlength=k + 1)[1:]
    new_id = np.cumsum(counts > 0) * (counts > 0)
    amodal_of = {int(new_id[seg]): full for seg, full in zip(thing_segments, amodal, strict=True)
                 if new_id[seg]}
    thin_of = {int(new_id[seg]): t for seg, t in zip(thing_segments, thin, strict=True) if new_id[seg]}
    if len(seg_ids):
        amodal_masks = torch.from_numpy(np.stack([amodal_of[int(s)] for s in seg_ids.tolist()]))
    else:
        amodal_masks = torch.zeros(0, *canvas.size, dtype=torch.bool)
    thin_flags = torch.tensor([thin_of[int(s)] for s in seg_ids.tolist()], dtype=torch.bool)
    # A patch's visible pixels: those still labelled stuff at the end (things, void and the border cover the rest).
    stuff_px = np.isin(canvas.labels, [j for j in range(k) if not canvas.isthing[j]])
    visible = [m & stuff_px for m in canvas.patches]
    patches = (torch.from_numpy(np.stack(visible)) if visible
               else torch.zeros(0, *canvas.size, dtype=torch.bool))
    image = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
    return SyntheticScene(image=image, panoptic=panoptic, masks=masks, amodal_masks=amodal_masks,
                          boxes=boxes, labels=labels, segment_ids=seg_ids, table=table, thin=thin_flags,
                          stuff_patch_masks=patches)


def split_counts(n: int, splits: Mapping[str, float]) -> dict[str, int]:
    """Images per split: ``n`` shared in proportion to the fractions (largest remainder, ties in order).

    Example:
        >>> split_counts(10, {"train": 0.75, "val": 0.25})
        {'train': 8, 'val': 2}
    """
    if not splits or any(f < 0 for f in splits.values()) or sum(splits.values()) <= 0:
        raise ValueError(f"splits must map names to non-negative fractions with a positive sum, "
                         f"got {dict(splits)}.")
    total = sum(splits.values())
    exact = {k: n * f / total for k, f in splits.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(splits, key=lambda k: -(exact[k] - counts[k]))  # stable: ties keep the given order
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def write_synthetic_dataset(out_dir: str | Path, n: int, size: int | tuple[int, int] = 256, seed: int = 0,
                            splits: Mapping[str, float] | None = None, *, table: CategoryTable | None = None,
                            config: SceneConfig | None = None, image_format: str = "png",
                            progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Write ``n`` scenes as a COCO-panoptic dataset; the same arguments give the same bytes.

    Layout::

        out_dir/images/synth_000001.png        RGB images (or .jpg)
        out_dir/panoptic/synth_000001.png      id PNGs, id = R + 256 G + 65536 B, void = 0
        out_dir/panoptic_<split>.json          images, annotations, categories

    Scene ``i`` (image id ``i + 1``) is drawn from ``numpy.random.default_rng([seed, i])``, so it does not depend
    on ``n``; splits take consecutive image ids in the order given. Files of the same name in ``out_dir`` are
    replaced (each atomically); other files are left alone. Same arguments, Pillow and zlib: same bytes.

    Args:
        out_dir: Output folder (created).
        n: Number of scenes.
        size: ``S`` or ``(H, W)``.
        seed: Base seed.
        splits: Split name -> fraction, default ``{"train": 0.8, "val": 0.2}``; a split may get 0 images.
        table: Category table (see :func:`generate_scene`); default :func:`synthetic_categories`.
        config: Scene knobs.
        image_format: ``"png"`` (lossless) or ``"jpg"`` (quality 95).
        progress: Called as ``progress(done, n)`` after each scene.

    Returns:
        Split name -> path of its ``panoptic_<split>.json``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     paths = write_synthetic_dataset(d, 3, 32, splits={"train": 2, "val": 1})
        ...     sorted(p.name for p in paths.values())
        ['panoptic_train.json', 'panoptic_val.json']
    """
    info = _dataset_info(n, size, seed, config, image_format)
    table = table or synthetic_categories()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = split_counts(n, splits or {"train": 0.8, "val": 0.2})
    paths: dict[str, Path] = {}
    index = 0
    for split, count in counts.items():
        # The split's images, PNGs and JSON appear together (see CocoPanopticWriter), the JSON last.
        with CocoPanopticWriter(table, out / f"panoptic_{split}.json", out / "panoptic",
                                ground_truth=True, info={**info, "split": split}) as writer:
            for _ in range(count):
                scene = generate_scene(np.random.default_rng([seed, index]), size, table, config)
                image_id = index + 1
                name = f"synth_{image_id:06d}"
                writer.files.write_bytes(out / "images" / f"{name}.{image_format}",
                                         _encode_image(scene.image, image_format))
                writer.add(scene.panoptic, image_id, f"{name}.png", image_file_name=f"{name}.{image_format}")
                index += 1
                if progress is not None:
                    progress(index, n)
        paths[split] = writer.out_json
    return paths


def _dataset_info(n: int, size: int | tuple[int, int], seed: int, config: SceneConfig | None,
                  image_format: str) -> dict[str, Any]:
    """The ``info`` of each split's JSON; a ``ValueError`` for a bad ``n`` or ``image_format``."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return {"description": "panoptic synthetic scenes", "seed": seed, "size": list(hw),
            "config": asdict(config or SceneConfig())}


def _encode_image(image: np.ndarray, image_format: str) -> bytes:
    if image_format == "png":
        return encode_png(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
