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


@torch.no_grad()
def assign_queries(prob: torch.Tensor, scores: torch.Tensor, mask_threshold: float,
                   foreground_of_weighted: bool) -> QueryAssignment:
    """Per pixel, the query with the largest ``score * prob``; per query, its areas.

    Equals ``(scores[:, None, None] * prob).argmax(0)`` and the sums of the masks it implies, without an
    ``argmax`` over the leading dimension (not vectorised on the CPU, about 4x the rest): the first index reaching
    the maximum is ``n - 1 - max_k((n - 1 - k) * [w_k == max])``, from vectorised ``amax`` passes.

    Args:
        prob: ``(n, H, W)`` float32 mask probabilities of the kept queries, ``1 <= n <= 32767``; **overwritten**
            with ``score * prob``.
        scores: ``(n,)`` float32 class scores.
        mask_threshold: A pixel is a query's foreground iff its value ``>= mask_threshold``.
        foreground_of_weighted: Threshold ``score * prob`` instead of ``prob`` (HF transformers does).

    Returns:
        The :class:`QueryAssignment`.
    """
    n = int(prob.shape[0])
    # foreground as float 0/1 (a bool result and a cast cost more): summed by one matrix-vector product, exact
    # below 2**24 pixels per query (partial sums of ones are integers that float32 holds exactly)
    fg = torch.empty(prob.shape, dtype=torch.float32, device=prob.device)
    if not foreground_of_weighted:
        torch.ge(prob, mask_threshold, out=fg)
    weighted = prob.mul_(scores.view(-1, 1, 1).to(prob.dtype))
    if foreground_of_weighted:
        torch.ge(weighted, mask_threshold, out=fg)
    flat = fg.reshape(n, -1)
    if flat.shape[1] < 1 << 24:
        foreground_area = (flat @ torch.ones(flat.shape[1], device=prob.device)).long()
    else:
        foreground_area = flat.sum(1, dtype=torch.float64).long()
    dtype = torch.uint8 if n <= 256 else torch.int16
    reverse = torch.arange(n - 1, -1, -1, dtype=dtype, device=prob.device).view(-1, 1, 1)
    at_max = torch.eq(weighted, weighted.amax(0))
    code = (at_max.view(torch.uint8) if dtype == torch.uint8 else at_max.to(dtype)).mul_(reverse)
    owner = (n - 1) - code.amax(0).long()
    region_area = torch.bincount(owner.reshape(-1), minlength=n)
    owner_foreground = fg.gather(0, owner[None])[0] > 0
    return QueryAssignment(owner, region_area, foreground_area, owner_foreground)
