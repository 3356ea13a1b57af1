"""UPSNet's inference-time mask pruning (paper §3.2; reference ``MaskROI`` + ``MaskRemoval``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from .._ops import overlap_flags
from ..structures import Instances
from .paste import BoxRegions, box_regions, paste_masks

__all__ = ["PruningConfig"]


@dataclass(frozen=True)
class PruningConfig:
    """Thresholds of the pruning, in the order they are applied (reference ``MaskROI`` + ``MaskRemoval``).

    Attributes:
        score_threshold: Keep an instance iff ``score > score_threshold`` (strict, in the scores' dtype;
            reference 0.6).
        nms_iou: Class-agnostic NMS as in the reference: boxes clipped to the image first, IoU with
            ``+1`` pixel sides (``(x2 - x1 + 1) * (y2 - y1 + 1)``, float32), a box is dropped iff its IoU
            with a box visited earlier and kept is ``> nms_iou`` (reference 0.5); visited by score,
            descending, equal scores the later input first (``argsort()[::-1]``). ``None`` disables NMS.
        max_instances: Keep the ``max_instances`` highest scores, and every box tied with the last of them
            (reference 100, ``score >= the 100th score``).
        overlap_threshold: Visiting the survivors by score, descending, equal scores in the order the
            reference's second ``argsort()[::-1]`` gives them (input order), drop a mask if
            ``|mask ∩ kept masks of the same class| / |mask| > overlap_threshold`` (reference 0.3), or
            if it is empty. Binary mask = pasted logit ``> 0``. ``None`` disables this step.
    """

    score_threshold: float = 0.6
    nms_iou: float | None = 0.5
    max_instances: int = 100
    overlap_threshold: float | None = 0.3


@dataclass
class LocalMasks:
    """Box-local geometry and mask logits of a set of instances.

    Attributes:
        regions: Paste and crop regions (see :func:`panoptic.fusion.paste.box_regions`).
        logits: Per instance, the mask logits inside its paste region.
    """

    regions: BoxRegions
    logits: list[torch.Tensor]


def local_mask_logits(instances: Instances, image_size: tuple[int, int], scale: float = 1.0) -> LocalMasks:
    """Box-local mask logits of every instance.

    ROI masks are resized into their paste box; full-image masks (``mask_space="image"``, already at
    ``image_size``) are cut to the same box, so both kinds give an instance zero logit outside its box.
    """
    regions = box_regions(instances.boxes, image_size, scale)
    if instances.mask_space == "roi":
        return LocalMasks(regions, paste_masks(instances.mask_logits, regions))
    return LocalMasks(regions, [m[y0:y1, x0:x1] for m, (y0, y1, x0, x1) in zip(instances.mask_logits, regions.paste)])


def prune_instances(instances: Instances, image_size: tuple[int, int], config: PruningConfig) -> torch.Tensor:
    """Indices of the instances UPSNet keeps, in descending score order.

    Args:
        instances: One image's detections, boxes in pixels of ``image_size``.
        image_size: ``(H, W)``.
        config: Thresholds.

    Returns:
        ``(K,)`` int64 indices into ``instances``.
    """
    return _prune(instances, image_size, config)[0]


def prune_and_paste(instances: Instances, image_size: tuple[int, int],
                    config: PruningConfig) -> tuple[torch.Tensor, LocalMasks]:
    """:func:`prune_instances` plus the box-local mask logits of the kept instances.

    The masks pasted for the overlap test are reused, so each kept instance's ROI mask is resized once.

    Returns:
        The kept indices (as :func:`prune_instances`) and ``local_mask_logits(instances[keep], image_size)``.
    """
    keep, local = _prune(instances, image_size, config)
    if local is None:
        local = local_mask_logits(instances[keep], image_size)
    return keep, local


def _prune(instances: Instances, image_size: tuple[int, int],
           config: PruningConfig) -> tuple[torch.Tensor, LocalMasks | None]:
    """Kept indices and, when the overlap test pasted them, the kept instances' local masks."""
    dev = instances.boxes.device
    idx = torch.nonzero(instances.scores > config.score_threshold)[:, 0]
    if idx.numel() == 0:
        return idx, None
    idx = idx[reverse_argsort(instances.scores[idx])]  # the reference NMS's visit order
    if config.nms_iou is not None:
        idx = idx[reference_nms(instances.boxes[idx], image_size, config.nms_iou)]
    if idx.numel() > config.max_instances:  # every box tied with the last one kept stays
        s = instances.scores[idx]
        k = config.max_instances
        idx = idx[s >= s.sort(descending=True).values[k - 1]] if k > 0 else idx[:0]
    idx = idx[reverse_argsort(instances.scores[idx])]  # the reference MaskRemoval's visit (and channel) order
    if config.overlap_threshold is None or idx.numel() == 0:
        return idx, None
    sub = instances[idx]
    local = local_mask_logits(sub, image_size)
    flags = overlap_flags(local.logits, local.regions.paste, sub.labels, image_size, config.overlap_threshold)
    kept = [j for j, f in enumerate(flags) if f]
    regions = BoxRegions([local.regions.paste[j] for j in kept], [local.regions.crop[j] for j in kept])
    return idx[torch.tensor(flags, dtype=torch.bool, device=dev)], LocalMasks(regions, [local.logits[j] for j in kept])


def reverse_argsort(scores: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 indices by score, descending, equal scores the later first: the reference's
    ``np.argsort(scores)[::-1]`` read with a stable sort (numpy's default sort is not guaranteed stable, so with
    many tied scores the reference's own order can vary with the numpy build; this one is deterministic)."""
    return torch.argsort(scores, stable=True).flip(0)


def reference_nms(boxes: torch.Tensor, image_size: tuple[int, int], iou_threshold: float) -> torch.Tensor:
    """UPSNet's class-agnostic NMS (``MaskROI``: ``clip_boxes`` then the Fast R-CNN ``gpu_nms``) on boxes already
    in visit order.

    Boxes are clipped to ``[0, W - 1] x [0, H - 1]``; the IoU counts ``+1`` pixel sides,
    ``inter = max(0, min(x2) - max(x1) + 1) * max(0, min(y2) - max(y1) + 1)`` over
    ``(x2 - x1 + 1) * (y2 - y1 + 1)`` areas, in float32; a box is dropped iff its IoU with an earlier kept box is
    ``> iou_threshold``. This is torchvision's IoU on ``[x1, y1, x2 + 1, y2 + 1]``, visited in the given order
    (strictly decreasing stand-in scores, so torchvision's own sort cannot reorder ties).

    Args:
        boxes: ``(N, 4)`` xyxy boxes in visit order.
        image_size: ``(H, W)``.
        iou_threshold: Drop iff IoU ``>`` this.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in visit order.
    """
    h, w = image_size
    b = boxes.detach().float()
    lo = b.new_tensor([0.0, 0.0, 0.0, 0.0])
    hi = b.new_tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0])
    b = torch.minimum(torch.maximum(b, lo), hi)
    b = torch.cat([b[:, :2], b[:, 2:] + 1.0], 1)
    rank = torch.arange(b.shape[0], 0, -1, dtype=torch.float32, device=b.device)
    return nms(b, rank, float(iou_threshold))
