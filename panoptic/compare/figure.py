"""The Figure-4-style panel: image | ground truth | combined method | UPSNet, one row per validation image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..categories import CategoryTable
from ..structures import PanopticResult
from ..visualize import colorize, side_by_side

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []


def comparison_figure(images: Sequence[np.ndarray], ground_truth: Sequence[PanopticResult],
                      columns: Mapping[str, Sequence[PanopticResult]], table: CategoryTable,
                      gap: int = 4, min_side: int = 200) -> np.ndarray:
    """Stack one row per image: the image, its ground truth, then each named column's result.

    Args:
        images: ``(H, W, 3)`` uint8 images.
        ground_truth: Their ground truths.
        columns: Column title -> one result per image (e.g. ``{"MR-CNN-PSP": [...], "UPSNet": [...]}``).
        table: Category table (colours).
        gap: Pixels between panels and rows.
        min_side: Small images are enlarged by an integer factor (nearest neighbour, so segment borders stay
            exact) until their short side reaches this.

    Returns:
        ``(H', W', 3)`` uint8; unknown pixels are drawn as in :func:`~panoptic.visualize.colorize`.
    """
    if len(images) != len(ground_truth) or any(len(v) != len(images) for v in columns.values()):
        raise ValueError("comparison_figure needs one ground truth and one result per column for every image.")
    if not images:
        raise ValueError("comparison_figure needs at least one image.")
    titles = ["image", "ground truth", *columns]
    rows = []
    for i, (img, gt) in enumerate(zip(images, ground_truth)):
        panels = [np.asarray(img, dtype=np.uint8), colorize(gt, table)]
        panels += [colorize(results[i], table) for results in columns.values()]
        k = max(1, -(-min_side // max(1, min(panels[0].shape[:2]))))
        if k > 1:
            panels = [p.repeat(k, 0).repeat(k, 1) for p in panels]
        rows.append(side_by_side(panels, titles if i == 0 else None, gap=gap))
    width = max(r.shape[1] for r in rows)
    out = []
    for k, r in enumerate(rows):
        if r.shape[1] < width:
            r = np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        out.append(r)
        if k < len(rows) - 1:
            out.append(np.full((gap, width, 3), 255, dtype=np.uint8))
    return np.concatenate(out, 0)
