"""The one shared helper that puts ROI mask logits into the image, and the box geometry it uses.

Geometry follows the UPSNet reference code (its ``MaskTerm``/``MaskRemoval`` and ``SegTerm``):

* a box (scaled by ``scale``) covers the pixels of its truncated coordinates: column ``trunc(x1)`` to
  column ``trunc(x2)`` (``int()`` in the reference), so a box is inside the image iff ``x1 < W`` and
  ``x2 > -1`` (same for y): ``[7.4, 1, 7.9, 2]`` in a width-8 image covers column 7;
* such boxes are then clipped to ``[0, W - 1] x [0, H - 1]``;
* **paste box**: ``x0 = trunc(x1)``, ``x1' = trunc(x2)`` (inclusive), same for y; the ``M x M`` logits
  are resized bilinearly (``align_corners=False``, like ``cv2.resize``) to ``(y1' - y0 + 1, x1' - x0 + 1)``;
* **crop box** (where the semantic logit of the instance's class is copied): start ``trunc``, end
  ``round`` (half to even), inclusive. It contains the paste box; on the right/bottom edge it can be
  one pixel larger, as in the reference.

A box whose truncated extent misses the image (``x1 >= W``, ``x2 <= -1``, same for y) gets empty regions, so
its instance has no pixels. (The reference clips its detector's boxes to the image before this step, so it
never meets one; a box outside the image is a caller's coordinate mistake and is not moved onto the border.)

Work is box-local: the cost is the sum of box areas, and the only host transfer is one ``tolist`` of
all box coordinates per call (no per-instance sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._ops.resize import resize_each

__all__ = ["box_regions", "paste_masks", "paste_masks_dense"]


@dataclass(frozen=True)
class BoxRegions:
    """Integer regions of ``N`` boxes, as half-open ``(y0, y1, x0, x1)`` tuples clipped to the image.

    Attributes:
        paste: Where the resized mask logits go (may be empty).
        crop: Where the semantic logit of the instance's class is copied (clipped; may be empty).
    """

    paste: list[tuple[int, int, int, int]]
    crop: list[tuple[int, int, int, int]]


def box_regions(boxes: torch.Tensor, image_size: tuple[int, int], scale: float = 1.0) -> BoxRegions:
    """Integer paste and crop regions of ``boxes`` ``(N, 4)`` in an image of ``image_size`` ``(H, W)``.

    Args:
        boxes: ``(N, 4)`` float xyxy boxes.
        image_size: ``(H, W)`` of the target map.
        scale: Factor applied to the boxes first (e.g. 0.25 for 1/4-resolution training logits).
    """
    h, w = image_size
    b = boxes.detach().double() * scale
    # Outside iff the truncated box misses the image: trunc(x1) > W - 1 <=> x1 >= W, trunc(x2) < 0 <=> x2 <= -1.
    outside = (b[:, 0] >= w) | (b[:, 2] <= -1) | (b[:, 1] >= h) | (b[:, 3] <= -1)
    bx = b[:, 0::2].clamp(0, w - 1)
    by = b[:, 1::2].clamp(0, h - 1)
    t = torch.stack([by[:, 0].trunc(), by[:, 1].trunc(), bx[:, 0].trunc(), bx[:, 1].trunc(),
                     by[:, 1].round(), bx[:, 1].round(), outside.double()], 1).long().tolist()
    paste, crop = [], []
    for y0, y1, x0, x1, ry1, rx1, out in t:
        if out:
            paste.append((0, 0, 0, 0))
            crop.append((0, 0, 0, 0))
            continue
        paste.append((y0, y1 + 1, x0, x1 + 1))
        crop.append((y0, ry1 + 1, x0, rx1 + 1))
    return BoxRegions(paste, crop)


def paste_masks(mask_logits: torch.Tensor, regions: BoxRegions) -> list[torch.Tensor]:
    """Resize each ROI mask into its paste box.

    Args:
        mask_logits: ``(N, M, M)`` ROI mask logits.
        regions: From :func:`box_regions`.

    Returns:
        ``N`` box-local tensors, tensor ``i`` of shape ``(y1 - y0, x1 - x0)`` of ``regions.paste[i]``
        (possibly empty). Differentiable with respect to ``mask_logits``.
    """
    filled = [i for i, (y0, y1, x0, x1) in enumerate(regions.paste) if y1 > y0 and x1 > x0]
    sizes = [(regions.paste[i][1] - regions.paste[i][0], regions.paste[i][3] - regions.paste[i][2]) for i in filled]
    if not filled:
        resized = []
    elif torch.is_grad_enabled() and mask_logits.requires_grad:  # training: the differentiable specification
        resized = [F.interpolate(mask_logits[i][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
                   for i, size in zip(filled, sizes, strict=True)]
    else:  # one C call for the masks torch resizes by its generic route, bit for bit
        some = len(filled) < len(regions.paste)
        resized = resize_each(mask_logits[filled] if some else mask_logits.contiguous(), sizes)
    out = dict(zip(filled, resized, strict=True))
    return [out[i] if i in out else mask_logits.new_zeros(0, 0) for i in range(len(regions.paste))]


def paste_masks_dense(mask_logits: torch.Tensor, regions: BoxRegions, image_size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` mask logits pasted into a zero canvas (the dense form; training and tests)."""
    h, w = image_size
    locs = paste_masks(mask_logits, regions)
    if not locs:
        return mask_logits.new_zeros(0, h, w)
    return torch.stack([_pad_to(loc, r, h, w) for loc, r in zip(locs, regions.paste)])


def crop_dense(channel_maps: torch.Tensor, regions: BoxRegions) -> torch.Tensor:
    """``(N, H, W)``: map ``i`` of ``channel_maps`` ``(N, H, W)`` kept inside crop box ``i``, 0 outside."""
    n, h, w = channel_maps.shape
    dev = channel_maps.device
    if n == 0:
        return channel_maps
    c = torch.tensor(regions.crop, device=dev)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    rin = (rows[None] >= c[:, 0:1]) & (rows[None] < c[:, 1:2])
    cin = (cols[None] >= c[:, 2:3]) & (cols[None] < c[:, 3:4])
    inside = rin[:, :, None] & cin[:, None, :]
    return channel_maps * inside.to(channel_maps.dtype)


def _pad_to(local: torch.Tensor, region: tuple[int, int, int, int], h: int, w: int) -> torch.Tensor:
    y0, y1, x0, x1 = region
    if y1 <= y0 or x1 <= x0:
        return local.new_zeros(h, w)
    return F.pad(local, (x0, w - x1, y0, h - y1))
