"""UPSNet's inference-time mask pruning (paper §3.2; reference ``MaskROI`` + ``MaskRemoval``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms

from ..structures import Instances
from . import reduce
from .base import scratch
from .paste import BoxRegions, box_regions, paste_masks

__all__ = ["LocalMasks", "PruningConfig", "local_mask_logits", "prune_and_paste", "prune_instances"]


@dataclass(frozen=True)
class PruningConfig:
    """Thresholds of the pruning, in the order they are applied.

    Attributes:
        score_threshold: Keep an instance iff ``score > score_threshold`` (strict; reference 0.6).
        nms_iou: Class-agnostic NMS: drop a box whose IoU with a higher-scored kept box is
            ``> nms_iou`` (torchvision semantics; reference 0.5). ``None`` disables NMS.
        max_instances: Keep at most this many, highest scores first (reference 100).
        overlap_threshold: In descending score order, drop a mask if
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
    order = torch.argsort(instances.scores[idx], descending=True, stable=True)
    idx = idx[order]
    if config.nms_iou is not None:
        keep = nms(instances.boxes[idx].float(), instances.scores[idx].float(), config.nms_iou)
        idx = idx[keep]  # nms returns kept indices in descending score order
    idx = idx[: config.max_instances]
    if config.overlap_threshold is None or idx.numel() == 0:
        return idx, None
    sub = instances[idx]
    local = local_mask_logits(sub, image_size)
    labels = sub.labels.tolist()
    masks = reduce.native_masks(local.logits) if dev.type == "cpu" else None
    if masks is not None:
        flags = _overlap_flags_native(local, masks, sub.labels, image_size, config.overlap_threshold)
    elif dev.type == "cpu":
        flags = _overlap_flags_host(local, labels, image_size, config.overlap_threshold)
    else:
        flags = _overlap_flags_device(local, labels, image_size, config.overlap_threshold, dev)
    kept = [j for j, f in enumerate(flags) if f]
    regions = BoxRegions([local.regions.paste[j] for j in kept], [local.regions.crop[j] for j in kept])
    return idx[torch.tensor(flags, dtype=torch.bool, device=dev)], LocalMasks(regions, [local.logits[j] for j in kept])


def _overlap_flags_native(local: LocalMasks, masks: list[np.ndarray], labels: torch.Tensor,
                          image_size: tuple[int, int], threshold: float) -> list[bool]:
    """The same-class overlap test in one C call (``panoptic.fusion._kernels``; same rule and float64 test as
    :func:`_overlap_flags_host`) on ``masks`` from :func:`~panoptic.fusion.reduce.native_masks`. The per-class
    canvases are a reused all-zero buffer, zero again after."""
    n = len(local.logits)
    if n == 0:
        return []
    num_labels = max(8, 1 << int(labels.max()).bit_length())  # a stable shape: the buffer is reused
    canvas = scratch("prune.native_canvas", (num_labels, *image_size), torch.uint8, labels.device, zero=True)
    boxes = np.asarray(local.regions.paste, dtype=np.int64).reshape(n, 4)
    return reduce._kernels.overlap_flags(masks, boxes, labels.to(torch.int64).numpy(), canvas.numpy(), image_size[0],
                                  image_size[1], float(threshold))


def _overlap_flags_host(local: LocalMasks, labels: list[int], image_size: tuple[int, int],
                        threshold: float) -> list[bool]:
    """The same-class overlap test with the counts read on the host (CPU tensors: a read costs nothing).

    Same rule and the same float64 arithmetic as :func:`_overlap_flags_device`. The per-class canvases
    are reused all-``False`` buffers: what is painted is cleared again before returning.
    """
    canvases: dict[int, torch.Tensor] = {}
    last = {lab: i for i, lab in enumerate(labels)}  # after its last instance a canvas is not needed
    painted: list[tuple[torch.Tensor, int, int, int, int]] = []
    flags = []
    try:
        for i, (y0, y1, x0, x1) in enumerate(local.regions.paste):
            m = local.logits[i] > 0
            area = int(m.sum())
            if area == 0:
                flags.append(False)
                continue
            canvas = canvases.get(labels[i])
            inter = 0 if canvas is None else int((m & canvas[y0:y1, x0:x1]).sum())
            keep = inter / area <= threshold
            if keep and last[labels[i]] > i:  # a later instance of this class will look at it
                if canvas is None:
                    canvas = canvases[labels[i]] = scratch(f"prune.canvas{labels[i]}", image_size, torch.bool,
                                                           m.device, zero=True)
                painted.append((canvas, y0, y1, x0, x1))
                canvas[y0:y1, x0:x1] |= m
            flags.append(keep)
    finally:
        for canvas, y0, y1, x0, x1 in painted:
            canvas[y0:y1, x0:x1] = False
    return flags


def _overlap_flags_device(local: LocalMasks, labels: list[int], image_size: tuple[int, int], threshold: float,
                          dev: torch.device) -> list[bool]:
    """The same-class overlap test with the flags kept on the device (no host sync per instance)."""
    canvases: dict[int, torch.Tensor] = {}
    keep_flags = []
    thr = torch.tensor(threshold, dtype=torch.float64, device=dev)
    for i, (y0, y1, x0, x1) in enumerate(local.regions.paste):
        m = local.logits[i] > 0
        canvas = canvases.get(labels[i])
        if canvas is None:
            canvas = canvases[labels[i]] = torch.zeros(image_size, dtype=torch.bool, device=dev)
        window = canvas[y0:y1, x0:x1]
        area = m.sum().double()
        inter = (m & window).sum().double()
        keep = (area > 0) & (inter / area.clamp(min=1) <= thr)
        window |= m & keep
        keep_flags.append(keep)
    if not keep_flags:
        return []
    return torch.stack(keep_flags).tolist()  # one host transfer for all instances
