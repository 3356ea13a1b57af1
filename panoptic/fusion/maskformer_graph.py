"""The query fusion's per-pixel path over a padded batch, with static shapes (exportable, no host syncs).

:class:`~panoptic.fusion.MaskFormerFusion` first keeps the queries whose best class is an object with a score
above ``object_mask_threshold`` and resizes their masks to the output size; which queries survive is a
data-dependent selection, so it runs eagerly (:meth:`MaskFormerFusion.kept_queries`) and the kept queries reach
the graph padded to the batch's largest count with a validity mask. Everything after it is per pixel and lives
here: each pixel's query (largest ``score * sigmoid``), the foreground and overlap tests, the merge of stuff
queries of one category and the segment numbering in query order. Its results equal the eager fusion's exactly
for the ``"mask2former"``, ``"maskformer"`` and ``"transformers"`` flavours (``tests/test_export_queries.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__: list[str] = []  # machinery of panoptic.export (see docs/concepts/ops.md)


class MaskFormerGraph(nn.Module):
    """Query assignment, overlap test, stuff merge and segment numbering of a padded batch of kept queries.

    Args:
        num_classes: The table's category count (merge keys of unmerged queries start above it).
        mask_threshold: A pixel is a query's foreground iff its value ``>= mask_threshold``.
        overlap_threshold: See ``strict_float32_ratio``.
        sigmoid: The mask values are logits (take their sigmoid); else they are probabilities already.
        paint_foreground_only: Paint only the owned pixels that are the owner's foreground (Mask2Former).
        foreground_of_weighted: Threshold ``score * probability`` instead of the probability (HF).
        strict_float32_ratio: ``float32(region / foreground) > overlap_threshold`` (HF) instead of the float64
            ratio ``>= overlap_threshold``.
    """

    def __init__(self, num_classes: int, mask_threshold: float, overlap_threshold: float, sigmoid: bool,
                 paint_foreground_only: bool, foreground_of_weighted: bool, strict_float32_ratio: bool) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.mask_threshold = float(mask_threshold)
        self.overlap_threshold = float(overlap_threshold)
        self.sigmoid = bool(sigmoid)
        self.paint_foreground_only = bool(paint_foreground_only)
        self.foreground_of_weighted = bool(foreground_of_weighted)
        self.strict_float32_ratio = bool(strict_float32_ratio)

    def forward(self, masks: torch.Tensor, scores: torch.Tensor, category: torch.Tensor, fuse: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch.

        Args:
            masks: ``(B, N, H, W)`` float32 mask logits (probabilities if not ``sigmoid``) of the kept queries at
                the output size, in query order (``N >= 1``; padding slots hold anything finite).
            scores: ``(B, N)`` float32 class score of each slot.
            category: ``(B, N)`` int64 contiguous category of each slot.
            fuse: ``(B, N)`` bool: the slot's segments merge with the others of its category.
            valid: ``(B, N)`` bool: the slot holds a kept query (``False`` for padding).

        Returns:
            ``segment_map`` ``(B, H, W)`` int32 (0 void; segments numbered by their first query),
            ``unknown_mask`` ``(B, H, W)`` bool (all ``False``), and per slot ``(B, N)`` each: ``category`` int64,
            ``score`` float32, ``area`` int64 (0 = no segment: a merged query's pixels count on the first query
            of its category) and ``slot`` int64.
        """
        b, n, h, w = masks.shape
        live = valid[:, :, None, None]
        prob = masks.sigmoid() if self.sigmoid else masks
        weighted = prob * scores[:, :, None, None]
        fg = ((weighted if self.foreground_of_weighted else prob) >= self.mask_threshold) & live
        # each pixel's query: the largest weighted probability, first on ties; n (nobody) without a kept query
        owner = torch.where(live, weighted, -1.0).max(1).indices  # argmax's indices, 3x faster on the CPU
        owner = torch.where(valid.gather(1, owner.reshape(b, -1)).reshape(b, h, w), owner, n)
        owner_fg = torch.cat([fg, fg.new_zeros(b, 1, h, w)], 1).gather(1, owner[:, None])[:, 0]
        region = _count(owner, n)
        fg_area = fg.sum((2, 3))
        if self.paint_foreground_only:
            painted_owner = torch.where(owner_fg, owner, n)
            painted = _count(painted_owner, n)
        else:
            painted_owner, painted = owner, region
        if self.strict_float32_ratio:
            ratio_ok = (region.float() / fg_area.float()).double() > self.overlap_threshold
        else:
            ratio_ok = region.double() / fg_area.double() >= self.overlap_threshold
        ok = valid & (region > 0) & (fg_area > 0) & (painted > 0) & ratio_ok
        segment_map, area, pos = number_segments(painted_owner, ok, category, fuse, self.num_classes)
        return (segment_map, torch.zeros_like(segment_map, dtype=torch.bool), category, scores.float(), area, pos)


def number_segments(owner: torch.Tensor, ok: torch.Tensor, category: torch.Tensor, fuse: torch.Tensor,
                    num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segments of a padded batch: merged slots under their first, numbered in slot order, and the map.

    Args:
        owner: ``(B, H, W)`` int64 slot painted at each pixel, ``N`` for none.
        ok: ``(B, N)`` bool: the slot makes a segment (its pixels are void otherwise).
        category: ``(B, N)`` int64 contiguous category of each slot.
        fuse: ``(B, N)`` bool: the slot merges with the other ``fuse`` slots of its category.
        num_classes: The table's category count (merge keys of unmerged slots start above it).

    Returns:
        ``segment_map`` ``(B, H, W)`` int32 (0 void; segments numbered by their first slot), ``area`` ``(B, N)``
        int64 (0 = no segment: a merged slot's pixels count on the first ok slot of its category) and the slot
        positions ``(B, N)`` int64.
    """
    b, n = ok.shape
    dev = ok.device
    pos = torch.arange(n, device=dev)[None].expand(b, n)
    key = torch.where(fuse, category, num_classes + pos)
    same = (key[:, :, None] == key[:, None, :]) & ok[:, None, :]
    rep = torch.where(ok, same.to(torch.uint8).argmax(2), n)  # the first ok slot with the same key
    pixel_rep = torch.cat([rep, rep.new_full((b, 1), n)], 1).gather(1, owner.reshape(b, -1))
    area = torch.zeros(b, n + 1, dtype=torch.int64, device=dev).scatter_add_(
        1, pixel_rep, torch.ones_like(pixel_rep))[:, :n]
    is_rep = (ok & (rep == pos)).long()
    seg_id = torch.cat([torch.cumsum(is_rep, 1) * is_rep, is_rep.new_zeros(b, 1)], 1)
    segment_map = seg_id.gather(1, pixel_rep).to(torch.int32).reshape(owner.shape)
    return segment_map, area, pos.contiguous()

def _count(owner: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, n)`` pixels of each slot in ``owner`` ``(B, H, W)`` (values ``0 .. n``, ``n`` = nobody)."""
    b = owner.shape[0]
    flat = owner.reshape(b, -1)
    return torch.zeros(b, n + 1, dtype=torch.int64, device=owner.device).scatter_add_(
        1, flat, torch.ones_like(flat))[:, :n]
