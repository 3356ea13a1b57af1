"""Types shared by every model: training targets, loss weights, network outputs and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import torch

from ..fusion import PanopticFusion
from ..structures import Instances, PanopticResult

__all__ = [
    "LossWeights",
    "NetworkOutput",
    "PanopticPrediction",
]

UPSNET_LOSSES = ("rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask", "semantic", "semantic_roi", "panoptic")
"""The eight UPSNet losses, in order."""


class TrainTarget(Protocol):
    """What a training target must provide (:class:`~panoptic.data.targets.PanopticTarget` does)."""

    semantic: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class LossWeights:
    """Weights of the eight UPSNet losses (the model returns weighted losses).

    A weight of 0 skips that loss (it is not computed and its key is absent). The dataset presets
    (:data:`~panoptic.models.COCO`, :data:`~panoptic.models.CITYSCAPES`) hold the reference weights.

    Attributes:
        rpn_objectness: RPN objectness.
        rpn_box: RPN box regression.
        box_cls: Box classification.
        box_reg: Box regression.
        mask: Mask.
        semantic: Semantic pixel cross-entropy (``fcn_loss_weight``).
        semantic_roi: Semantic RoI loss (COCO: ``0.2 * fcn_loss_weight``).
        panoptic: Panoptic head loss.

    Example:
        >>> LossWeights(semantic=0.2).as_dict()["semantic"]
        0.2
    """

    rpn_objectness: float = 1.0
    rpn_box: float = 1.0
    box_cls: float = 1.0
    box_reg: float = 1.0
    mask: float = 1.0
    semantic: float = 1.0
    semantic_roi: float = 1.0
    panoptic: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"LossWeights.{f.name} must be >= 0, got {getattr(self, f.name)}.")

    def as_dict(self) -> dict[str, float]:
        """``{loss name: weight}``."""
        return asdict(self)


@dataclass
class PanopticPrediction:
    """Inference output for one image, at input resolution (cropped to the valid size when given).

    Attributes:
        semantic_logits: ``(C, h, w)`` semantic logits (stuff channels first).
        instances: Detections (boxes xyxy in input pixels, thing-index labels, ``(N, 28, 28)`` mask logits).
        panoptic: The plugged-in fusion's result, ``(h, w)``.
    """

    semantic_logits: torch.Tensor
    instances: Instances
    panoptic: PanopticResult


@dataclass
class NetworkOutput:
    """The networks' outputs for a batch, before any fusion (what a model's ``network`` returns).

    Attributes:
        semantic_logits: ``(B, C, H, W)`` semantic logits at the padded input resolution (stuff first).
        instances: Detections per image (boxes xyxy in input pixels, thing-index labels, ``(N, 28, 28)`` mask
            logits), boxes clipped to each image's valid size.
        image_sizes: Valid ``(h, w)`` of each image.
        features: The FPN features when requested (``keep_features=True``), else ``None``; the oracle rows of
            the ablation use them to score ground-truth boxes.
    """

    semantic_logits: torch.Tensor
    instances: list[Instances]
    image_sizes: list[tuple[int, int]]
    features: dict[str, torch.Tensor] | None = None

    def fuse(self, fusion: PanopticFusion) -> list[PanopticPrediction]:
        """Run ``fusion`` on each image's valid region (see :func:`fuse_outputs`)."""
        return fuse_outputs(fusion, self.semantic_logits, self.instances, self.image_sizes)


def fuse_outputs(fusion: PanopticFusion, logits: torch.Tensor, instances: Sequence[Instances],
                 sizes: Sequence[tuple[int, int]]) -> list[PanopticPrediction]:
    """Crop each image's input-resolution logits to its valid size and run the fusion.

    Args:
        fusion: The fusion.
        logits: ``(B, C, H, W)`` semantic logits at the (padded) input resolution.
        instances: Detections per image, boxes in input pixels.
        sizes: Valid ``(h, w)`` per image.
    """
    out = []
    for b, (inst, (h, w)) in enumerate(zip(instances, sizes)):
        sem = logits[b:b + 1, :, :h, :w].float()
        out.append(PanopticPrediction(sem[0], inst, fusion(sem, [inst])[0]))
    return out
