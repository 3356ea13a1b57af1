"""UPSNet's mask pruning test: is an instance's mask mostly covered by earlier kept masks of its class?"""

from __future__ import annotations

import numpy as np
import torch

from ..fusion.base import scratch
from .rows import as_native
from .switch import native_kernels

__all__ = ["overlap_flags"]

Region = tuple[int, int, int, int]


@torch.no_grad()
def overlap_flags(masks: list[torch.Tensor], regions: list[Region], labels: torch.Tensor,
                  image_size: tuple[int, int], threshold: float) -> list[bool]:
    """Keep flags of the same-class overlap test, visiting the instances in order.

    An instance's foreground is ``mask > 0`` inside its region; it is kept iff its area is positive and
    ``|mask ∧ kept masks of its class| / |mask| <= threshold`` (float64). Kept masks are painted on their
    class's canvas for the later instances.

    Args:
        masks: ``N`` box-local mask logits, mask ``i`` of shape ``(y1 - y0, x1 - x0)`` of ``regions[i]``.
        regions: ``N`` half-open ``(y0, y1, x0, x1)`` regions inside ``image_size``.
        labels: ``(N,)`` integer class of each instance.
        image_size: ``(H, W)``.
        threshold: Drop iff the overlapped fraction is ``>`` this.

    Returns:
        ``N`` flags (one host transfer).
    """
    n = len(masks)
    if n == 0:
        return []
    kernels = native_kernels()
    native = None
    if kernels is not None and labels.device.type == "cpu":
        native = [as_native(m.contiguous()) if m.numel() else _NO_MASK for m in masks]
    if native is not None and all(m is not None for m in native):
        num_labels = max(8, 1 << int(labels.max()).bit_length())  # a stable shape: the buffer is reused
        # all zero, and left all zero by the kernel for the next image
        canvas = scratch("prune.native_canvas", (num_labels, *image_size), torch.uint8, labels.device, zero=True)
        boxes = np.asarray(regions, dtype=np.int64).reshape(n, 4)
        return kernels.overlap_flags(native, boxes, labels.to(torch.int64).numpy(), canvas.numpy(), image_size[0],
                                     image_size[1], float(threshold))
    # The specification: flags stay on the device until the end (no host sync per instance).
    dev = labels.device
    classes = labels.tolist()  # one host transfer for the canvas choice
    before, after = _same_class_contacts(regions, classes)
    bounds = _canvas_bounds(regions, classes, before, after)
    canvases: dict[int, torch.Tensor] = {}
    keep_flags = []
    thr = torch.tensor(threshold, dtype=torch.float64, device=dev)
    for i, (y0, y1, x0, x1) in enumerate(regions):
        m = masks[i] > 0
        area = torch.count_nonzero(m)  # int64, as a sum of bools, without casting the mask (2x faster on the CPU)
        if not (before[i] or after[i]):  # no box of its class touches it: no canvas
            keep_flags.append(area > 0)
            continue
        cls = classes[i]
        oy0, _, ox0, _ = bounds[cls]
        if cls not in canvases:
            canvases[cls] = torch.zeros((bounds[cls][1] - oy0, bounds[cls][3] - ox0), dtype=torch.bool, device=dev)
        window = canvases[cls][y0 - oy0:y1 - oy0, x0 - ox0:x1 - ox0]
        if before[i]:  # earlier kept masks of its class may cover part of it
            inter = torch.count_nonzero(m & window)
            keep = (area > 0) & (inter.double() / area.clamp(min=1).double() <= thr)
        else:  # nothing of its class painted here yet
            keep = area > 0
        if after[i]:  # a later box of its class touches it: paint it if kept
            window |= m.logical_and_(keep)
        keep_flags.append(keep)
    return torch.stack(keep_flags).tolist()


def _same_class_contacts(regions: list[Region], classes: list[int]) -> tuple[list[bool], list[bool]]:
    """Per instance: does an earlier / a later region of the same class intersect its region?

    Only there can a kept mask meet another one of its class, so elsewhere the test needs no canvas (host
    arithmetic on the regions, which are host integers already; an empty region intersects nothing).
    """
    r = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    c = np.asarray(classes)
    rows = np.maximum(r[:, None, 0], r[None, :, 0]) < np.minimum(r[:, None, 1], r[None, :, 1])
    cols = np.maximum(r[:, None, 2], r[None, :, 2]) < np.minimum(r[:, None, 3], r[None, :, 3])
    touch = rows & cols & (c[:, None] == c[None, :]) & np.tri(len(r), k=-1, dtype=bool)  # [i, j]: j < i touches i
    return touch.any(1).tolist(), touch.any(0).tolist()


def _canvas_bounds(regions: list[Region], classes: list[int], before: list[bool],
                   after: list[bool]) -> dict[int, Region]:
    """Per class, the bounding rectangle of its regions that touch another one of the class: the only place its
    canvas is read or painted."""
    bounds: dict[int, Region] = {}
    for (y0, y1, x0, x1), cls, b, a in zip(regions, classes, before, after, strict=True):
        if b or a:
            r = bounds.get(cls, (y0, y1, x0, x1))
            bounds[cls] = (min(r[0], y0), max(r[1], y1), min(r[2], x0), max(r[3], x1))
    return bounds


_NO_MASK = np.zeros(0, dtype=np.float32)
