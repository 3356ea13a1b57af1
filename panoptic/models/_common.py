"""Machinery shared by the architectures: input padding and checks, target batching, loss weighting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..categories import CategoryTable
from ..constants import IGNORE_INDEX
from .types import LossWeights, TrainTarget


def pad_images(images: torch.Tensor, divisor: int) -> torch.Tensor:
    """``(B, 3, H, W)`` float images zero-padded bottom/right to multiples of ``divisor``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) float tensor, got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be float (normalized), got {images.dtype}.")
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def valid_sizes(images: torch.Tensor, sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """The valid ``(h, w)`` of each image, checked against the batch; default the full ``(H, W)``."""
    b, h, w = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
    if sizes is None:
        return [(h, w)] * b
    out = [(int(s[0]), int(s[1])) for s in sizes]
    if len(out) != b:
        raise ValueError(f"got {len(out)} image sizes for a batch of {b} images.")
    for s in out:
        if not (0 < s[0] <= h and 0 < s[1] <= w):
            raise ValueError(f"image size {s} must be positive and fit in the {h}x{w} batch.")
    return out


@dataclass
class Batch:
    """Training targets as padded tensors; instances with empty boxes removed."""

    semantic: torch.Tensor  # (B, H, W) int64
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: list[torch.Tensor]
    sizes: list[tuple[int, int]]


def prepare_batch(images: torch.Tensor, targets: Sequence[TrainTarget], padded: torch.Tensor) -> Batch:
    """Check targets against the images, pad their maps like ``padded``, drop degenerate instances."""
    b, h, w = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
    ph, pw = int(padded.shape[-2]) - h, int(padded.shape[-1]) - w
    if len(targets) != b:
        raise ValueError(f"got {len(targets)} targets for a batch of {b} images; pass one target per image.")
    dev = images.device
    sems, boxes, labels, masks, sizes = [], [], [], [], []
    for k, t in enumerate(targets):
        sem = t.semantic
        if tuple(sem.shape) != (h, w):
            raise ValueError(f"target {k}: semantic map is {tuple(sem.shape)} but the images are {h}x{w}; pad targets "
                             "with the images (panoptic.data.collate does both).")
        m = t.masks
        n = int(t.boxes.shape[0])
        if m.shape != (n, h, w) or t.labels.shape != (n,):
            raise ValueError(f"target {k}: need boxes (N, 4), labels (N,) and masks (N, {h}, {w}); got "
                             f"{tuple(t.boxes.shape)}, {tuple(t.labels.shape)}, {tuple(m.shape)}.")
        bx = t.boxes.to(dev).float()
        keep = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
        sems.append(F.pad(sem.to(dev).long(), (0, pw, 0, ph), value=IGNORE_INDEX))
        boxes.append(bx[keep])
        labels.append(t.labels.to(dev).long()[keep])
        masks.append(F.pad(m.to(dev).bool()[keep], (0, pw, 0, ph), value=False))
        size = getattr(t, "image_size", None) or (h, w)
        sizes.append((min(int(size[0]), h), min(int(size[1]), w)))
    return Batch(torch.stack(sems), boxes, labels, masks, sizes)


def weighted(losses: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    """Each loss times its weight; zero-weight losses dropped."""
    w = weights.as_dict()
    return {k: v * w[k] for k, v in losses.items() if w[k] != 0}


def check_table(table: CategoryTable, num_classes: int, num_things: int) -> None:
    """Raise ``ValueError`` when a model's class counts disagree with the category table."""
    if num_classes != table.num_classes:
        raise ValueError(f"the semantic model predicts {num_classes} classes but the category table has "
                         f"{table.num_classes} ({table.num_stuff} stuff + {table.num_things} things).")
    if num_things != table.num_things:
        raise ValueError(f"the instance head predicts {num_things} thing classes but the category table has "
                         f"{table.num_things}.")


class TrainOrPredict:
    """``forward`` of the models: training mode -> ``self.losses(images, targets)``, eval mode ->
    ``self.predict(images, image_sizes)``."""

    training: bool

    def forward(self, images: torch.Tensor, targets: Sequence[TrainTarget] | None = None,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> Any:
        """Training mode: ``losses`` (targets required); eval mode: ``predict``."""
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__} in training mode needs targets; call model.eval() for "
                                 "inference.")
            return self.losses(images, targets)  # type: ignore[attr-defined]
        return self.predict(images, image_sizes)  # type: ignore[attr-defined]
