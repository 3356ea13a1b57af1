"""Centre-offset primitives: centre NMS peaks and the nearest centre of each pixel's predicted centre."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CHUNK_ELEMENTS", "heatmap_peaks", "nearest_centre"]

#: Pixels x centres per distance chunk: bounds the ``(chunk, K)`` work tensors to a few MiB each.
CHUNK_ELEMENTS = 1 << 21


@torch.no_grad()
def heatmap_peaks(heatmap: torch.Tensor, kernel: int) -> torch.Tensor:
    """Which pixels equal the maximum of their ``kernel x kernel`` window (stride 1, centred, edges unpadded).

    Every pixel of a flat maximum is a peak (``==`` against the max-pooled map, as Panoptic-DeepLab). The
    ``k x k`` maximum is taken as a column maximum of row maxima (``2k`` instead of ``k^2`` reads per pixel; the
    same values, as a maximum does not depend on the grouping).

    Args:
        heatmap: ``(H, W)`` float.
        kernel: Odd window size ``>= 1``.

    Returns:
        ``(H, W)`` bool.
    """
    pad = (kernel - 1) // 2
    rows = F.max_pool2d(heatmap[None, None], kernel_size=(1, kernel), stride=1, padding=(0, pad))
    pooled = F.max_pool2d(rows, kernel_size=(kernel, 1), stride=1, padding=(pad, 0))[0, 0]
    return heatmap == pooled


@torch.no_grad()
def nearest_centre(points: torch.Tensor, centres: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Index of the centre nearest to each point (Euclidean), ties to the lowest centre index.

    Distances are compared squared, in float32: ``(cy - py)^2 + (cx - px)^2``. Points are taken in chunks so
    that the ``(chunk, K)`` distance tensor stays below ``chunk_elements`` values, whatever ``N``.

    Args:
        points: ``(N, 2)`` float32 ``(y, x)`` (each pixel's coordinate plus its offset).
        centres: ``(K, 2)`` ``(y, x)``, ``K >= 1``.
        chunk_elements: Bound on ``chunk * K``.

    Returns:
        ``(N,)`` int64 in ``0 .. K - 1``.
    """
    k = int(centres.shape[0])
    if k == 0:
        raise ValueError("nearest_centre needs at least one centre.")
    c = centres.to(torch.float32)
    cy, cx = c[:, 0][None], c[:, 1][None]
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    step = max(1, chunk_elements // k)
    for start in range(0, points.shape[0], step):  # a loop over chunks of pixels, not over centres
        p = points[start:start + step]
        dy = cy - p[:, 0:1]
        dx = cx - p[:, 1:2]
        d2 = dy.mul_(dy).addcmul_(dx, dx)
        out[start:start + step] = d2.min(1).indices  # argmin's indices (the first minimum), 1.5-1.8x faster
    return out
