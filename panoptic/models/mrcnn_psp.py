"""The MR-CNN-PSP baseline: a separately trained Mask R-CNN and PSPNet combined by a fusion at inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbone import FPNBackbone
from ..fusion import PanopticFusion
from ..heads.instance import InstanceHead
from ..heads.psp import PSPNet
from ..structures import Instances
from ._common import TrainOrPredict, check_table, pad_images, prepare_batch, valid_sizes, weighted
from .types import LossWeights, NetworkOutput, PanopticPrediction, TrainTarget

__all__ = ["MRCNNPSP", "MaskRCNN"]


class MaskRCNN(TrainOrPredict, nn.Module):
    """A standalone Mask R-CNN: :class:`FPNBackbone` + :class:`InstanceHead`.

    Training mode: ``model(images, targets)`` -> the five weighted instance losses. Eval mode:
    ``model(images, image_sizes)`` -> one :class:`Instances` per image.

    Args:
        backbone: timm backbone + FPN.
        instance_head: The Mask R-CNN heads.
        loss_weights: Only the five instance weights are used; default all 1.
    """

    def __init__(self, *, backbone: FPNBackbone, instance_head: InstanceHead,
                 loss_weights: LossWeights | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.instance_head = instance_head
        self.loss_weights = loss_weights or LossWeights()

    def train_parts(self) -> dict[str, nn.Module]:
        """One network, one optimizer: ``{"model": self}``."""
        return {"model": self}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the normalized input this model expects."""
        return self.backbone.normalize(images)

    def losses(self, images: torch.Tensor, targets: Sequence[TrainTarget]) -> dict[str, torch.Tensor]:
        """Weighted ``rpn_objectness``, ``rpn_box``, ``box_cls``, ``box_reg``, ``mask``."""
        if not self.training:
            raise ValueError("MaskRCNN.losses needs training mode; call model.train().")
        padded = pad_images(images, self.backbone.size_divisor)
        batch = prepare_batch(images, targets, padded)
        feats = self.backbone(padded)
        losses = self.instance_head.losses(padded, feats, batch.boxes, batch.labels, batch.masks, batch.sizes)
        return weighted(losses, self.loss_weights)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> list[Instances]:
        """Detections with mask logits per image, boxes clipped to the valid size."""
        sizes = valid_sizes(images, image_sizes)
        padded = pad_images(images, self.backbone.size_divisor)
        return self.instance_head.detect(padded, self.backbone(padded), sizes)

    def mask_logits(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                    labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The mask head's ``(N, M, M)`` logits of given boxes and labels (see :meth:`InstanceHead.mask_logits`)."""
        return self.instance_head.mask_logits(features, boxes, labels)

    def classify_boxes(self, features: dict[str, torch.Tensor],
                       boxes: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The box head's scores and labels of given boxes (see :meth:`InstanceHead.classify_boxes`)."""
        return self.instance_head.classify_boxes(features, boxes)


class MRCNNPSP(TrainOrPredict, nn.Module):
    """MR-CNN-PSP: a separately trained :class:`MaskRCNN` and :class:`~panoptic.heads.PSPNet`, fused at inference.

    Train the parts with separate optimizers: ``model.detector(images, targets)`` and
    ``model.semantic(images, targets)`` each return their own loss dict (``model(images, targets)`` returns
    both merged, for convenience). Eval mode: ``model(images, image_sizes)`` -> :class:`PanopticPrediction`.

    Args:
        detector: The Mask R-CNN.
        semantic: The PSP semantic model (``num_classes = table.num_classes``).
        fusion: Fusion used at inference (usually :class:`HeuristicFusion`).
    """

    description = "an MR-CNN-PSP model"
    train_panoptic_loss = False  # no panoptic head: its semantic logits were never trained for UPSNetFusion

    def __init__(self, *, detector: MaskRCNN, semantic: PSPNet, fusion: PanopticFusion) -> None:
        super().__init__()
        check_table(fusion.table, semantic.num_classes, detector.instance_head.num_things)
        bb = detector.backbone
        same = torch.allclose(bb.pixel_mean, semantic.pixel_mean) and torch.allclose(bb.pixel_std, semantic.pixel_std)
        if not same:
            raise ValueError("the detector and the semantic model normalize images differently; both parts take the "
                             "same input, so use backbones with the same timm pixel mean and std.")
        self.table = fusion.table
        self.detector = detector
        self.semantic = semantic
        self.fusion = fusion

    def train_parts(self) -> dict[str, nn.Module]:
        """The separately trained parts: ``{"detector": ..., "semantic": ...}``."""
        return {"detector": self.detector, "semantic": self.semantic}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the normalized input both parts expect."""
        return self.detector.normalize(images)

    def losses(self, images: torch.Tensor, targets: Sequence[TrainTarget]) -> dict[str, torch.Tensor]:
        """Both parts' losses merged (detector's five, then ``semantic``)."""
        return {**self.detector.losses(images, targets), **self.semantic(images, targets)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> list[PanopticPrediction]:
        """Semantic logits, detections and the fusion's result per image."""
        return self.network(images, image_sizes).fuse(self.fusion)

    @torch.no_grad()
    def network(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                keep_features: bool = False) -> NetworkOutput:
        """Both networks' outputs without fusion; ``features`` are the detector's FPN features when kept."""
        sizes = valid_sizes(images, image_sizes)
        padded = pad_images(images, self.detector.backbone.size_divisor)
        feats = self.detector.backbone(padded)
        instances = self.detector.instance_head.detect(padded, feats, sizes)
        logits = self.semantic.logits(images)
        return NetworkOutput(logits, instances, sizes, feats if keep_features else None)

    @torch.no_grad()
    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` semantic logits of ``(B, 3, H, W)`` normalized images: the PSP part only."""
        return self.semantic.logits(images)

    def mask_logits(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                    labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The detector's mask logits of given boxes and labels."""
        return self.detector.mask_logits(features, boxes, labels)

    def classify_boxes(self, features: dict[str, torch.Tensor],
                       boxes: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The detector's box scores and labels of given boxes."""
        return self.detector.classify_boxes(features, boxes)
