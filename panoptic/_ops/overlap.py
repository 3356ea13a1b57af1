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
    canvases: dict[int, torch.Tensor] = {}
    keep_flags = []
    thr = torch.tensor(threshold, dtype=torch.float64, device=dev)
    for i, (y0, y1, x0, x1) in enumerate(regions):
        m = masks[i] > 0
        canvas = canvases.get(classes[i])
        if canvas is None:
            canvas = canvases[classes[i]] = torch.zeros(image_size, dtype=torch.bool, device=dev)
        window = canvas[y0:y1, x0:x1]
        area = m.sum().double()
        inter = (m & window).sum().double()
        keep = (area > 0) & (inter / area.clamp(min=1) <= thr)
        window |= m & keep
        keep_flags.append(keep)
    return torch.stack(keep_flags).tolist()


_NO_MASK = np.zeros(0, dtype=np.float32)
