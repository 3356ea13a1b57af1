"""Fusion inputs derived from a panoptic ground truth: the "oracle" logits.

Used to check that a fusion reproduces a ground truth when its inputs are perfect, for the oracle rows
of the ablation, and to build demo inputs.
"""

from __future__ import annotations

import torch

from ..categories import CategoryTable
from ..formats import segment_bboxes
from ..structures import Instances, PanopticResult

__all__ = ["oracle_inputs"]


def oracle_inputs(gt: PanopticResult, table: CategoryTable, margin: float = 10.0,
                  scores: torch.Tensor | None = None) -> tuple[torch.Tensor, Instances]:
    """Semantic logits and instances that encode ``gt``.

    * semantic logits: ``+margin`` for the pixel's category, ``-margin`` elsewhere; void pixels get
      ``+margin`` on every thing channel (a thing the detector missed, which UPSNet calls unknown and
      the heuristics leave void); crowd pixels get their class (thing pixels with no instance);
    * one instance per non-crowd thing segment, in segment order: box = the segment's inclusive pixel
      extent, full-image mask logits ``+margin`` on the segment and ``-margin`` elsewhere, score 1 (or
      ``scores``).

    Args:
        gt: Ground truth, ``(H, W)``.
        table: Its category table.
        margin: Logit magnitude.
        scores: Optional ``(N,)`` scores of the thing segments.

    Returns:
        ``(C, H, W)`` semantic logits and the :class:`Instances` (``mask_space="image"``).
    """
    h, w = gt.image_size
    dev = gt.segment_map.device
    nst = table.num_stuff
    seg = gt.segment_map.long()
    sem = torch.full((table.num_classes, h, w), -margin, device=dev)
    cat_lut = torch.cat([torch.tensor([-1], device=dev), gt.category])
    cat_map = cat_lut[seg]
    labeled = cat_map >= 0
    sem.scatter_(0, cat_map.clamp(min=0)[None], torch.where(labeled, margin, -margin)[None].expand(1, h, w))
    sem[nst:, ~labeled] = margin
    things = torch.nonzero(gt.isthing & ~gt.iscrowd)[:, 0]
    ids = things + 1
    masks = seg[None] == ids[:, None, None]
    bb = segment_bboxes(gt.segment_map, gt.num_segments)[things].float()
    boxes = torch.stack([bb[:, 0], bb[:, 1], bb[:, 0] + bb[:, 2] - 1, bb[:, 1] + bb[:, 3] - 1], 1)
    if scores is None:
        scores = torch.ones(len(things), device=dev)
    inst = Instances(boxes, scores.float(), gt.category[things] - nst,
                     torch.where(masks, margin, -margin).float(), mask_space="image")
    return sem, inst
