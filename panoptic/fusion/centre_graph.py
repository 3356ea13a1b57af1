"""Panoptic-DeepLab's grouping over a padded batch, with static shapes (exportable, no host syncs).

:class:`~panoptic.fusion.CentreOffsetFusion` finds the centres first: the peaks of the heatmap, then the ``top_k``
cut, a data-dependent number of points, so that step runs eagerly (:meth:`CentreOffsetFusion.find_centres`, the
same code as the eager fusion) and the centres reach the graph padded with a validity mask. Everything after it
is per pixel and lives here: the semantic argmax, each thing pixel's nearest centre (a dense ``(H * W, K)``
distance, as detectron2's ``group_pixels``), every centre's majority class, the stuff area test and the segment
numbering. Its results equal the eager fusion's exactly (``tests/test_export_centres.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__: list[str] = []  # machinery of panoptic.export (see docs/concepts/ops.md)


class CentreOffsetGraph(nn.Module):
    """Semantic argmax, offset grouping, majority class, stuff area and segment numbering of a padded batch.

    Args:
        isthing: ``(C,)`` bool, the table's thing categories (stuff first).
        stuff_area: A stuff category keeps its pixels iff its area is ``>= stuff_area`` (``> stuff_area`` with
            ``strict_stuff_area``).
        strict_stuff_area: deeplab2's ``>``.
        things_without_centre: deeplab2: in an image with no centre, each thing category is one segment.
    """

    def __init__(self, isthing: torch.Tensor, stuff_area: float, strict_stuff_area: bool,
                 things_without_centre: bool) -> None:
        super().__init__()
        self.register_buffer("isthing", isthing.clone(), persistent=False)
        self.stuff_area = float(stuff_area)
        self.strict_stuff_area = bool(strict_stuff_area)
        self.things_without_centre = bool(things_without_centre)

    def forward(self, sem: torch.Tensor, offsets: torch.Tensor, centres: torch.Tensor, centre_score: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch.

        Args:
            sem: ``(B, C, H, W)`` float semantic logits (a one-hot map for label inputs), stuff channels first.
            offsets: ``(B, 2, H, W)`` float32 ``dy``, ``dx``.
            centres: ``(B, K, 2)`` int64 ``(y, x)`` of the centres in row-major order (``K >= 1``, padding last).
            centre_score: ``(B, K)`` float32 heatmap value at each centre.
            valid: ``(B, K)`` bool: the slot holds a centre.

        Returns:
            ``segment_map`` ``(B, H, W)`` int32 (0 void; centres in order, then categories), ``unknown_mask``
            ``(B, H, W)`` bool (all ``False``), and per candidate (the ``K`` centres, then the ``C`` categories)
            ``(B, K + C)`` each: ``category`` int64, ``score`` float32 (NaN for categories), ``area`` int64 (0 = no
            segment) and ``slot`` int64 (the centre slot, -1 for categories).
        """
        b, c, h, w = sem.shape
        k = centres.shape[1]
        dev = sem.device
        # argmax (first maximum on ties) as max's indices: several times faster on the CPU
        labels = sem.max(1).indices.reshape(b, h * w)
        thing = self.isthing[labels]
        # each thing pixel's nearest centre to (y + dy, x + dx), squared float32 distances, ties to the first
        ys = torch.arange(h, device=dev).float()[None, :, None] + offsets[:, 0]
        xs = torch.arange(w, device=dev).float()[None, None, :] + offsets[:, 1]
        cyx = centres.float()
        dy = cyx[:, None, :, 0] - ys.reshape(b, h * w, 1)
        dx = cyx[:, None, :, 1] - xs.reshape(b, h * w, 1)
        d2 = torch.addcmul(dy * dy, dx, dx)
        d2 = torch.where(valid[:, None, :], d2, float("inf"))
        any_centre = valid.any(1, keepdim=True)
        # argmin's indices (the first minimum) as min's: 1.5-1.8x faster on the CPU
        owner = torch.where(thing & any_centre, d2.min(2).indices, -1)  # (B, H * W)
        # majority class of each centre's pixels (smallest category on ties); other pixels vote in a dump bin
        vote = torch.where(owner >= 0, owner * c + labels, k * c)
        votes = torch.zeros(b, k * c + 1, dtype=torch.int64, device=dev).scatter_add_(1, vote, torch.ones_like(vote))
        centre_class = votes[:, :k * c].reshape(b, k, c).argmax(2)
        # categories: stuff by total area; thing categories only without any centre (deeplab2)
        area = torch.zeros(b, c, dtype=torch.int64, device=dev).scatter_add_(1, labels, torch.ones_like(labels))
        big = area > self.stuff_area if self.strict_stuff_area else area >= self.stuff_area
        isthing = self.isthing[None]
        things_kept = isthing & ~any_centre if self.things_without_centre else torch.zeros_like(big)
        class_keep = things_kept | (~isthing & big)  # not a bool `where`: ONNX Runtime has no bool Where kernel
        pixel = torch.where(owner >= 0, owner, torch.where(class_keep.gather(1, labels), k + labels, -1)) + 1
        cand_area = torch.zeros(b, k + c + 1, dtype=torch.int64, device=dev).scatter_add_(
            1, pixel, torch.ones_like(pixel))[:, 1:]
        live = (cand_area > 0).long()
        new_id = torch.cat([live.new_zeros(b, 1), torch.cumsum(live, 1) * live], 1)
        segment_map = new_id.gather(1, pixel).to(torch.int32).reshape(b, h, w)
        category = torch.cat([centre_class, torch.arange(c, device=dev)[None].expand(b, c)], 1)
        score = torch.cat([centre_score.float(), torch.full((b, c), float("nan"), device=dev)], 1)
        slot = torch.cat([torch.arange(k, device=dev)[None].expand(b, k),
                          torch.full((b, c), -1, dtype=torch.int64, device=dev)], 1)
        return segment_map, torch.zeros_like(segment_map, dtype=torch.bool), category, score, cand_area, slot
