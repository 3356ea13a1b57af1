"""The per-pixel step of the query fusions: each pixel's query, and each query's areas."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["QueryAssignment", "assign_queries"]


class QueryAssignment(NamedTuple):
    """What :func:`assign_queries` returns.

    Attributes:
        owner: ``(H, W)`` int64 query with the largest weighted probability (first on ties, as ``argmax(0)``).
        region_area: ``(n,)`` int64 pixels each query owns.
        foreground_area: ``(n,)`` int64 pixels where the query's thresholded value is foreground.
        owner_foreground: ``(H, W)`` bool: the owner's own value is foreground there.
    """

    owner: torch.Tensor
    region_area: torch.Tensor
    foreground_area: torch.Tensor
    owner_foreground: torch.Tensor


#: Bytes of float32 mask values handled per row chunk: the chunk's passes then run in the CPU's cache.
CHUNK_BYTES = 1 << 20


@torch.no_grad()
def assign_queries(prob: torch.Tensor, scores: torch.Tensor, mask_threshold: float,
                   foreground_of_weighted: bool, sigmoid: bool = False) -> QueryAssignment:
    """Per pixel, the query with the largest ``score * prob``; per query, its areas.

    Equals ``(scores[:, None, None] * prob).argmax(0)`` and the sums of the masks it implies, without an
    ``argmax`` over the leading dimension (not vectorised on the CPU, about 4x the rest): the first index reaching
    the maximum is ``n - 1 - max_k((n - 1 - k) * [w_k == max])``, from vectorised ``amax`` passes. The image is
    processed in chunks of rows (:data:`CHUNK_BYTES`) so that the passes after the first read from cache.

    Args:
        prob: ``(n, H, W)`` float32 mask probabilities of the kept queries (logits with ``sigmoid=True``),
            ``n >= 1``; **overwritten** with ``score * prob``.
        scores: ``(n,)`` float32 class scores.
        mask_threshold: A pixel is a query's foreground iff its value ``>= mask_threshold``.
        foreground_of_weighted: Threshold ``score * prob`` instead of ``prob`` (HF transformers does).
        sigmoid: ``prob`` holds logits: take their sigmoid first (in place).

    Returns:
        The :class:`QueryAssignment`.
    """
    n, h, w = (int(v) for v in prob.shape)
    dev = prob.device
    owner = torch.empty(h, w, dtype=torch.int64, device=dev)
    owner_foreground = torch.empty(h, w, dtype=torch.bool, device=dev)
    foreground_area = torch.zeros(n, dtype=torch.int64, device=dev)
    dtype = torch.uint8 if n <= 256 else torch.int32
    reverse = torch.arange(n - 1, -1, -1, dtype=dtype, device=dev).view(-1, 1, 1)
    sc = scores.view(-1, 1, 1).to(prob.dtype)
    rows = h if dev.type != "cpu" else max(1, CHUNK_BYTES // (4 * n * w))
    for r0 in range(0, h, rows):
        p = prob[:, r0:r0 + rows]
        if sigmoid:
            p.sigmoid_()
        if not foreground_of_weighted:
            fg = p >= mask_threshold
        p.mul_(sc)
        if foreground_of_weighted:
            fg = p >= mask_threshold
        foreground_area += fg.view(torch.uint8).sum((1, 2), dtype=torch.int64)
        at_max = torch.eq(p, p.amax(0))
        code = (at_max.view(torch.uint8) if dtype == torch.uint8 else at_max.to(dtype)).mul_(reverse)
        o = owner[r0:r0 + rows]
        o.copy_(code.amax(0)).neg_().add_(n - 1)
        owner_foreground[r0:r0 + rows] = fg.gather(0, o[None])[0]
    region_area = torch.bincount(owner.reshape(-1), minlength=n)
    return QueryAssignment(owner, region_area, foreground_area, owner_foreground)
