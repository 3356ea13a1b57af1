"""Training targets derived from a ground-truth :class:`~panoptic.structures.PanopticResult`.

The panoptic map is the single source of truth: the semantic map, the instance masks, boxes and
labels and the crowd mask are all computed from it, so they can never disagree with each other
(transforms act on the image and the panoptic map only; see :mod:`panoptic.data.transforms`).

Conventions (UPSNet, see the reference notes §6.1-6.3):

* ``semantic`` holds contiguous ids (stuff first, then things) and :data:`~panoptic.constants.IGNORE_INDEX`
  (255) for void;
  **crowd segments keep their class** in ``semantic``.
* Crowd segments are not instances; they are reported in ``crowd_mask``.
* Boxes are ``x1, y1, x2, y2`` in pixel-edge coordinates: a mask covering columns ``3..5`` has
  ``x1 = 3, x2 = 6`` (COCO's ``[x, y, w, h]`` is ``[x1, y1, x2 - x1, y2 - y1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..categories import CategoryTable
from ..constants import IGNORE_INDEX
from ..structures import PanopticResult

# Training targets built inside the engine's data pipeline.
__all__: list[str] = []

"""Value of void (and padding) pixels in ``PanopticTarget.semantic``."""


@dataclass
class PanopticTarget:
    """Ground truth of one image, aligned with its image tensor.

    Attributes:
        semantic: ``(H, W)`` int64 contiguous category ids; 255 = void / padding. Crowd pixels
            keep their class.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` (pixel edges) of the non-crowd instances.
        labels: ``(N,)`` int64 thing index (contiguous id minus ``num_stuff``).
        masks: ``(N, H, W)`` bool visible masks of the non-crowd instances.
        crowd_mask: ``(H, W)`` bool, ``True`` on crowd segments.
        segment_ids: ``(N,)`` int64 id of each instance in ``panoptic.segment_map``.
        panoptic: The panoptic ground truth (``iscrowd`` set; void and padding are 0).
        image_id: The COCO ``image_id``.
        file_name: The panoptic PNG's file name (as in the annotation).
        image_size: ``(h, w)`` of the valid (unpadded) image region after resizing.
        orig_size: ``(H0, W0)`` of the image on disk.
    """

    semantic: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    crowd_mask: torch.Tensor
    segment_ids: torch.Tensor
    panoptic: PanopticResult
    image_id: int | str
    file_name: str
    image_size: tuple[int, int]
    orig_size: tuple[int, int]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` bool masks -> ``(N, 4)`` float32 ``x1, y1, x2, y2`` pixel-edge boxes.

    Empty masks get ``[0, 0, 0, 0]``.

    Example:
        >>> m = torch.zeros(1, 4, 6, dtype=torch.bool)
        >>> m[0, 1:3, 2:5] = True
        >>> masks_to_boxes(m).tolist()
        [[2.0, 1.0, 5.0, 3.0]]
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def thing_targets(panoptic: PanopticResult,
                  table: CategoryTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Instance targets of the non-crowd thing segments, in segment order.

    Returns:
        ``masks (N, H, W)`` bool, ``boxes (N, 4)`` float32 pixel-edge xyxy, ``labels (N,)`` int64
        thing index, ``segment_ids (N,)`` int64.
    """
    keep = panoptic.isthing & ~panoptic.iscrowd
    seg_ids = torch.nonzero(keep).reshape(-1) + 1
    masks = panoptic.segment_map[None].long() == seg_ids[:, None, None]
    labels = panoptic.category[keep] - table.num_stuff
    return masks, masks_to_boxes(masks), labels.long(), seg_ids.long()


def build_target(panoptic: PanopticResult, table: CategoryTable, image_id: int | str = 0, file_name: str = "",
                 image_size: tuple[int, int] | None = None,
                 orig_size: tuple[int, int] | None = None) -> PanopticTarget:
    """Derive every training target from a panoptic ground truth.

    Args:
        panoptic: Ground truth with ``iscrowd`` flags.
        table: The category table (for ``num_stuff``).
        image_id: Stored as is.
        file_name: Stored as is.
        image_size: Valid region; defaults to the map's size.
        orig_size: Size on disk; defaults to the map's size.
    """
    masks, boxes, labels, seg_ids = thing_targets(panoptic, table)
    crowd_lut = torch.cat([torch.zeros(1, dtype=torch.bool), panoptic.iscrowd.cpu()])
    size = panoptic.image_size
    return PanopticTarget(
        semantic=panoptic.semantic_map(void=IGNORE_INDEX).long(),
        boxes=boxes, labels=labels, masks=masks,
        crowd_mask=crowd_lut.to(panoptic.segment_map.device)[panoptic.segment_map.long()],
        segment_ids=seg_ids, panoptic=panoptic, image_id=image_id, file_name=file_name,
        image_size=image_size or size, orig_size=orig_size or size)


def pad_panoptic(panoptic: PanopticResult, size: tuple[int, int]) -> PanopticResult:
    """Pad a result on the bottom/right to ``size`` with void (areas are unchanged)."""
    h, w = panoptic.image_size
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad a {h}x{w} map to the smaller size {size[0]}x{size[1]}.")
    if ph == 0 and pw == 0:
        return panoptic
    return replace(panoptic, segment_map=F.pad(panoptic.segment_map, (0, pw, 0, ph), value=0),
                   unknown_mask=F.pad(panoptic.unknown_mask, (0, pw, 0, ph), value=False))


def pad_target(target: PanopticTarget, size: tuple[int, int]) -> PanopticTarget:
    """Pad every map of a target on the bottom/right to ``size``: semantic 255, masks and crowd ``False``.

    Boxes, labels and ``image_size`` are unchanged.
    """
    h, w = target.semantic.shape
    ph, pw = size[0] - h, size[1] - w
    if ph == 0 and pw == 0:
        return target
    return replace(target, semantic=F.pad(target.semantic, (0, pw, 0, ph), value=IGNORE_INDEX),
                   masks=F.pad(target.masks, (0, pw, 0, ph), value=False),
                   crowd_mask=F.pad(target.crowd_mask, (0, pw, 0, ph), value=False),
                   panoptic=pad_panoptic(target.panoptic, size))
