"""Imperfect head outputs of every fusion family, simulated from a synthetic scene's ground truth.

`panoptic demo` and the tutorials need each family's raw outputs without a trained network: semantic logits
(all families), query class and mask logits (MaskFormer-style models) and a centre heatmap with offsets
(Panoptic-DeepLab). Each simulation starts from the ground truth and adds what real heads get wrong: smooth
spatial noise, missed segments, a class confusion, a spurious prediction.

Example:
    >>> import numpy as np
    >>> from panoptic.data.synthetic import generate_scene
    >>> scene = generate_scene(np.random.default_rng(0), 64)
    >>> cls, masks = simulate_queries(scene, np.random.default_rng(1), num_queries=20)
    >>> tuple(cls.shape), tuple(masks.shape)
    ((20, 9), (20, 16, 16))
    >>> sem, heat, off = simulate_centre_offsets(scene, np.random.default_rng(1))
    >>> tuple(sem.shape), tuple(heat.shape), tuple(off.shape)
    ((8, 64, 64), (1, 64, 64), (2, 64, 64))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .constants import IGNORE_INDEX
from .data.synthetic import SyntheticScene

__all__ = ["simulate_centre_offsets", "simulate_queries"]


def _smooth_noise(g: torch.Generator, channels: int, size: tuple[int, int], cell: int = 16) -> torch.Tensor:
    """``(channels, H, W)`` spatially smooth unit noise (random values on a coarse grid, upsampled)."""
    h, w = size
    coarse = torch.randn(1, channels, max(h // cell, 1), max(w // cell, 1), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]


def simulate_semantic(scene: SyntheticScene, g: torch.Generator, *, margin: float = 4.0,
                      noise: float = 2.5) -> torch.Tensor:
    """Semantic logits: ``margin`` on the true class, ``-margin`` elsewhere, plus smooth and pixel noise.

    Args:
        scene: The scene (its semantic ground truth; void pixels get no clear class).
        g: Torch random generator.
        margin: Logit of the true class (others ``-margin``).
        noise: Std of the smooth noise.

    Returns:
        ``(C, H, W)`` float32 logits, channels in the table's contiguous order.
    """
    c = scene.table.num_classes
    sem_gt = scene.semantic
    onehot = F.one_hot(sem_gt.clamp(max=c - 1), c).permute(2, 0, 1).float()
    onehot[:, sem_gt == IGNORE_INDEX] = 0.5  # void: no clear class
    size = (int(sem_gt.shape[0]), int(sem_gt.shape[1]))
    return margin * (2 * onehot - 1) + noise * _smooth_noise(g, c, size) + 0.5 * torch.randn(c, *size, generator=g)


def _confused(label: int, first: int, count: int, rng: np.random.Generator, prob: float) -> tuple[int, bool]:
    """``label``, or with chance ``prob`` another of the ``count`` classes starting at ``first``."""
    if count > 1 and rng.random() < prob:
        return first + int((label - first + rng.integers(1, count)) % count), True
    return label, False


def simulate_queries(scene: SyntheticScene, rng: np.random.Generator, *, num_queries: int = 50,
                     mask_stride: int = 4, margin: float = 5.0, miss_prob: float = 0.1,
                     confuse_prob: float = 0.1, duplicates: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Class and mask logits of a query-based model (MaskFormer / Mask2Former style).

    One query per ground-truth segment, but a missed thing's (chance ``miss_prob``) predicts "no object"; a
    confused thing's (chance ``confuse_prob``) predicts another thing class with less confidence; ``duplicates``
    queries repeat a thing, weaker and shifted; the rest predict "no object" with random blobs as masks.

    Args:
        scene: The scene.
        rng: Random generator.
        num_queries: ``Q``, at least the number of segments plus ``duplicates``.
        mask_stride: Mask logits are at ``1 / mask_stride`` of the image size (rounded up), as query models'.
        margin: Logit scale of the confident predictions.
        miss_prob: Chance a (non-crowd) thing has no query.
        confuse_prob: Chance a thing's query has the wrong thing class.
        duplicates: Number of duplicate thing queries.

    Returns:
        ``(Q, K + 1)`` class logits (classes in the table's contiguous order, the last = no object) and
        ``(Q, ceil(H / s), ceil(W / s))`` mask logits.

    Raises:
        ValueError: ``num_queries`` too small for the scene.
    """
    table, gt = scene.table, scene.panoptic
    h, w = gt.image_size
    mh, mw = -(-h // mask_stride), -(-w // mask_stride)
    k, s = table.num_classes, gt.num_segments
    thing_ids = [i for i in range(s) if bool(gt.isthing[i]) and not bool(gt.iscrowd[i])]
    extra = min(duplicates, len(thing_ids))
    if num_queries < s + extra:
        raise ValueError(f"num_queries={num_queries} is less than the scene's {s} segments + {extra} duplicates: "
                         f"pass num_queries >= {s + extra}.")
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    # segment masks at the mask resolution (area average), then logits around them
    onehot = (gt.segment_map[None].long() == torch.arange(1, s + 1)[:, None, None]).float()
    coarse = F.adaptive_avg_pool2d(onehot[None], (mh, mw))[0]
    cls = torch.full((num_queries, k + 1), -margin)
    cls[:, k] = margin  # "no object" unless a segment claims the query
    masks = margin * (2 * torch.rand(num_queries, 1, 1, generator=g) - 1.5) + 2.0 * _smooth_noise(
        g, num_queries, (mh, mw), cell=4)
    order = rng.permutation(num_queries)  # queries are in no particular order
    sources = [(i, 0.0) for i in range(s)] + [(int(rng.choice(thing_ids)), 1.0) for _ in range(extra)]
    for q, (seg, shift) in zip(order.tolist(), sources, strict=False):
        thing = seg in thing_ids  # misses and confusions hit things only, as simulate_predictions' detections
        if thing and shift == 0.0 and rng.random() < miss_prob:
            continue
        label, wrong = (_confused(int(gt.category[seg]), table.num_stuff, table.num_things, rng, confuse_prob)
                        if thing else (int(gt.category[seg]), False))
        conf = margin * (0.5 if wrong or shift else 1.0) * float(rng.uniform(0.8, 1.2))
        cls[q] = torch.randn(k + 1, generator=g) - 2.0
        cls[q, label] = conf
        m = coarse[seg]
        if shift:
            m = torch.roll(m, shifts=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), dims=(0, 1))
        masks[q] = margin * (2 * m - 1) + 1.5 * _smooth_noise(g, 1, (mh, mw), cell=4)[0]
    return cls, masks


def simulate_centre_offsets(scene: SyntheticScene, rng: np.random.Generator, *, sigma: float = 4.0,
                            miss_prob: float = 0.1, offset_noise: float = 1.0, false_centres: int = 1,
                            margin: float = 4.0, noise: float = 2.5
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semantic logits, centre heatmap and offsets of a bottom-up model (Panoptic-DeepLab style).

    Every non-crowd thing gets a Gaussian peak of height in ``(0.5, 1)`` at the pixel nearest its centre of mass
    (a missed one, chance ``miss_prob``, none), every thing pixel an offset pointing to that pixel plus noise;
    ``false_centres`` weak spurious peaks are added.

    Args:
        scene: The scene.
        rng: Random generator.
        sigma: Std of the centre Gaussians, pixels.
        miss_prob: Chance a thing has no centre peak.
        offset_noise: Std of the offset noise, pixels.
        false_centres: Number of spurious peaks (height in ``(0.15, 0.3)``).
        margin: As in :func:`simulate_semantic`.
        noise: As in :func:`simulate_semantic`.

    Returns:
        ``(C, H, W)`` semantic logits, ``(1, H, W)`` heatmap in ``[0, 1]`` and ``(2, H, W)`` offsets
        (channel 0 = dy, 1 = dx: centre minus pixel).
    """
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sem = simulate_semantic(scene, g, margin=margin, noise=noise)
    h, w = scene.panoptic.image_size
    yy = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    heat = torch.zeros(h, w)
    offsets = offset_noise * torch.randn(2, h, w, generator=g)
    for m in scene.masks:
        if not bool(m.any()):
            continue
        # the centre pixel nearest the centre of mass, as Panoptic-DeepLab's targets: a centre of mass on a pixel
        # edge would give two equal heatmap maxima, two centres for one thing
        cy, cx = float(yy[m].mean().round()), float(xx[m].mean().round())
        offsets[0][m] += cy - yy[m]
        offsets[1][m] += cx - xx[m]
        if rng.random() >= miss_prob:
            peak = float(rng.uniform(0.5, 1.0))
            heat = torch.maximum(heat, peak * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    for _ in range(false_centres):
        cy, cx, peak = float(rng.uniform(0, h)), float(rng.uniform(0, w)), float(rng.uniform(0.15, 0.3))
        heat = torch.maximum(heat, peak * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return sem, heat[None], offsets
