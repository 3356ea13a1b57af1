"""Turn a raw per-pixel label map plus a candidate segment table into a canonical :class:`PanopticResult`.

Every fusion and importer ends here, so the result invariants (contiguous ids, positive areas equal to
pixel counts, no overlap) are enforced in one place.
"""

from __future__ import annotations

import torch

from .structures import PanopticResult

__all__ = ["assemble_result"]


def assemble_result(
    labels: torch.Tensor,
    category: torch.Tensor,
    isthing: torch.Tensor,
    score: torch.Tensor,
    source: torch.Tensor,
    iscrowd: torch.Tensor | None = None,
    unknown_mask: torch.Tensor | None = None,
) -> PanopticResult:
    """Build a result from a map of candidate indices.

    Args:
        labels: ``(H, W)`` integer map; ``-1`` = void, ``k`` = candidate ``k`` of the table below.
        category: ``(K,)`` contiguous category of each candidate.
        isthing: ``(K,)`` bool.
        score: ``(K,)`` float.
        source: ``(K,)`` int64 instance index or -1.
        iscrowd: ``(K,)`` bool, default all ``False``.
        unknown_mask: ``(H, W)`` bool, default all ``False``; must only mark void pixels.

    Returns:
        The result; candidates with no pixel are dropped and the rest renumbered ``1..S`` in
        candidate order.
    """
    k = int(category.numel())
    device = labels.device
    flat = labels.reshape(-1).long() + 1  # void -> 0
    counts = torch.bincount(flat, minlength=k + 1)[1:]
    keep = counts > 0
    # new id of candidate j = 1 + number of kept candidates before it; void stays 0.
    new_id = torch.cumsum(keep.long(), 0) * keep.long()
    lut = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), new_id])
    segment_map = lut[flat].reshape(labels.shape).to(torch.int32)
    if iscrowd is None:
        iscrowd = torch.zeros(k, dtype=torch.bool, device=device)
    if unknown_mask is None:
        unknown_mask = torch.zeros(labels.shape, dtype=torch.bool, device=device)
    return PanopticResult(
        segment_map=segment_map,
        unknown_mask=unknown_mask,
        category=category[keep].long(),
        isthing=isthing[keep].bool(),
        score=score[keep].float(),
        area=counts[keep],
        source=source[keep].long(),
        iscrowd=iscrowd[keep].bool(),
    )
