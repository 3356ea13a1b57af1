"""Panoptic-DeepLab's post-processing re-expressed from reading its reference code (the parity oracle).

Written from reading detectron2's ``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py``
(``flavor="detectron2"``), with deeplab2's three documented differences behind ``flavor="deeplab2"``
(``model/post_processor/panoptic_deeplab.py`` and its merge op). It keeps the reference's structure on purpose:
a full-image ``torch.norm`` over the transposed (strided) ``(K, H*W, 2)`` difference, a Python loop per centre
and per stuff class, ``torch.mode`` for the vote. ``benchmarks/fusion_speed.py --family centre`` times it.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F


def reference_centres(heatmap: torch.Tensor, threshold: float, nms_kernel: int, top_k: int | None,
                      flavor: str = "detectron2") -> torch.Tensor:
    """``(K, 2)`` (y, x) centres of a ``(1, H, W)`` heatmap, row-major."""
    heat = F.threshold(heatmap, threshold, -1.0)  # values <= threshold become -1
    pooled = F.max_pool2d(heat, kernel_size=nms_kernel, stride=1, padding=(nms_kernel - 1) // 2)
    heat = heat.clone()
    heat[heat != pooled] = -1
    heat = heat.squeeze(0)
    if flavor == "detectron2":
        if top_k is None:
            return torch.nonzero(heat > 0)
        kth = torch.topk(heat.flatten(), top_k).values[-1]
        return torch.nonzero(heat > kth.clamp(min=0))
    centres = torch.nonzero(heat > 0)
    if top_k is not None and centres.shape[0] > top_k:
        kth = torch.topk(heat.flatten(), top_k).values[-1]
        centres = torch.nonzero(heat > kth)
    return centres


def reference_group(centres: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` index + 1 of the nearest centre of every pixel (as detectron2's ``group_pixels``)."""
    h, w = offsets.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=offsets.dtype), torch.arange(w, dtype=offsets.dtype), indexing="ij")
    loc = torch.stack([ys, xs]) + offsets
    loc = loc.flatten(1).T[None]  # (1, H*W, 2), a transposed (strided) view as in the reference
    dist = torch.norm(centres[:, None] - loc, dim=-1)  # (K, H*W)
    return dist.argmin(0).reshape(1, h, w) + 1


def reference_panoptic(sem_seg: torch.Tensor, heatmap: torch.Tensor, offsets: torch.Tensor, thing_ids: set[int],
                       label_divisor: int, stuff_area: int, void_label: int, threshold: float, nms_kernel: int,
                       top_k: int | None, flavor: str = "detectron2") -> torch.Tensor:
    """``(1, H, W)`` int64 ``category * label_divisor + instance`` map from argmax'd ``(1, H, W)`` labels."""
    thing_seg = torch.zeros_like(sem_seg)
    for c in thing_ids:
        thing_seg[sem_seg == c] = 1
    centres = reference_centres(heatmap, threshold, nms_kernel, top_k, flavor)
    if centres.shape[0] == 0:
        ins_seg = torch.zeros_like(sem_seg)
    else:
        ins_seg = thing_seg * reference_group(centres, offsets)
    pan = torch.zeros_like(sem_seg) + void_label
    is_thing = (ins_seg > 0) & (thing_seg > 0)
    tracker: Counter[int] = Counter()
    for ins_id in torch.unique(ins_seg):
        if ins_id == 0:
            continue
        mask = (ins_seg == ins_id) & is_thing
        if torch.nonzero(mask).shape[0] == 0:
            continue
        cls, _ = torch.mode(sem_seg[mask].view(-1))
        tracker[int(cls)] += 1
        pan[mask] = cls * label_divisor + tracker[int(cls)]
    for cls in torch.unique(sem_seg):
        c = int(cls)
        if c in thing_ids:
            if flavor == "deeplab2" and centres.shape[0] == 0:
                pan[sem_seg == c] = c * label_divisor  # deeplab2: a thing class without centres is one segment
            continue
        mask = (sem_seg == c) & (ins_seg == 0)
        area = int(mask.sum())
        if (area > stuff_area) if flavor == "deeplab2" else (area >= stuff_area):
            pan[mask] = c * label_divisor
    return pan
