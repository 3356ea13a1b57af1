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
    # void -> key 0, candidate j -> key j + 1 (int32 maps stay int32: half the memory traffic)
    keys = (labels if labels.dtype in (torch.int32, torch.int64) else labels.long()) + 1
    counts = torch.bincount(keys.reshape(-1), minlength=k + 1)
    key_label = torch.arange(-1, k, device=labels.device)
    return assemble_from_keys(keys, counts, key_label, category, isthing, score, source, iscrowd, unknown_mask)


def assemble_from_keys(
    keys: torch.Tensor,
    key_counts: torch.Tensor,
    key_label: torch.Tensor,
    category: torch.Tensor,
    isthing: torch.Tensor,
    score: torch.Tensor,
    source: torch.Tensor,
    iscrowd: torch.Tensor | None = None,
    unknown_mask: torch.Tensor | None = None,
) -> PanopticResult:
    """Build a result from a map of *keys*, several keys possibly naming the same candidate.

    The general form of :func:`assemble_result` for fusions that label pixels with a finer code than the
    candidate (e.g. instance x semantic class) and have already counted the codes: areas, the id
    renumbering and the segment map all come from ``key_counts`` and one table lookup per pixel.

    Args:
        keys: ``(H, W)`` int32 or int64 map with values in ``0 .. len(key_counts) - 1``.
        key_counts: ``(Q,)`` int64 pixel count of each key (``bincount`` of ``keys``).
        key_label: ``(Q,)`` int64 candidate of each key, ``-1`` = void.
        category: As in :func:`assemble_result` (the ``K`` candidates' table).
        isthing: As in :func:`assemble_result`.
        score: As in :func:`assemble_result`.
        source: As in :func:`assemble_result`.
        iscrowd: As in :func:`assemble_result`.
        unknown_mask: As in :func:`assemble_result`.

    Returns:
        As :func:`assemble_result`.
    """
    k = int(category.numel())
    device = keys.device
    slot = key_label.long() + 1  # void -> 0
    counts = torch.zeros(k + 1, dtype=torch.int64, device=device).index_add_(0, slot, key_counts.long())[1:]
    keep = counts > 0
    # new id of candidate j = 1 + number of kept candidates before it; void stays 0.
    new_id = torch.cumsum(keep.long(), 0) * keep.long()
    lut = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), new_id])[slot].to(torch.int32)
    # imported here: panoptic._ops imports panoptic.fusion, whose modules import this one
    from ._ops.keys import relabel_keys

    segment_map = relabel_keys(lut, keys)
    if iscrowd is None:
        iscrowd = torch.zeros(k, dtype=torch.bool, device=device)
    if unknown_mask is None:
        unknown_mask = torch.zeros(keys.shape, dtype=torch.bool, device=device)
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
