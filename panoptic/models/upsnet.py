"""UPSNet (paper §3.1-3.2): shared backbone + FPN, semantic and instance heads, a pluggable fusion, and the
panoptic-head loss trained through :class:`~panoptic.fusion.UPSNetFusion` on ground-truth boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import FPNBackbone
from ..fusion import PanopticFusion, UPSNetFusion
from ..heads.instance import InstanceHead
from ..heads.semantic import SemanticHead, nearest_resize_labels
from ..structures import Instances
from ._common import Batch, TrainOrPredict, check_table, pad_images, prepare_batch, valid_sizes, weighted
from .types import LossWeights, NetworkOutput, PanopticPrediction, TrainTarget

__all__ = ["UPSNet"]


class UPSNet(TrainOrPredict, nn.Module):
    """UPSNet: shared backbone, semantic and instance heads, a pluggable fusion, and the panoptic loss.

    Training (``model.train(); model(images, targets)``) returns the weighted losses ``rpn_objectness``,
    ``rpn_box``, ``box_cls``, ``box_reg``, ``mask``, ``semantic``, ``semantic_roi`` and ``panoptic`` (keys whose
    weight is 0, and ``panoptic`` when ``train_panoptic_loss=False``, are absent). The panoptic loss follows
    the reference: ground-truth boxes -> mask logits of their ground-truth class -> ``panoptic_head.make_targets``
    on the 1/4-resolution semantic target and masks (nearest) with a seeded generator held by the model ->
    ``panoptic_logits`` on the 1/4 semantic logits with ``box_scale=0.25`` -> ``panoptic_loss``, averaged over
    the batch.

    Inference (``model.eval(); model(images, image_sizes)``) returns a :class:`PanopticPrediction` per image:
    semantic logits upsampled to the input size, the detections, and ``fusion``'s result.

    Args:
        backbone: timm backbone + FPN.
        semantic_head: Semantic head (``num_classes = table.num_classes``).
        instance_head: Instance head (``num_things = table.num_things``).
        fusion: Any fusion for inference; its table is the model's table.
        loss_weights: Loss weights; default all 1.
        train_panoptic_loss: Train the panoptic head loss (UPSNet, UPSNet-CP) or not (UPSNet-C).
        panoptic_head: The :class:`UPSNetFusion` whose targets, logits and loss train the panoptic head;
            default ``fusion`` when that is a :class:`UPSNetFusion`.
        seed: Seed of the generator choosing the instances turned unknown.

    Raises:
        ValueError: If the heads' class counts or channels disagree with the table or the backbone, or the
            panoptic loss is requested without a :class:`UPSNetFusion`.
    """

    description = "a UPSNet model"

    def __init__(self, *, backbone: FPNBackbone, semantic_head: SemanticHead, instance_head: InstanceHead,
                 fusion: PanopticFusion, loss_weights: LossWeights | None = None, train_panoptic_loss: bool = True,
                 panoptic_head: UPSNetFusion | None = None, seed: int = 0) -> None:
        super().__init__()
        table = fusion.table
        check_table(table, semantic_head.num_classes, instance_head.num_things)
        for name, head in (("semantic", semantic_head), ("instance", instance_head)):
            if head.in_channels != backbone.out_channels:
                raise ValueError(f"the {name} head expects {head.in_channels} input channels but the FPN gives "
                                 f"{backbone.out_channels}; build it with in_channels=backbone.out_channels.")
        if panoptic_head is None and isinstance(fusion, UPSNetFusion):
            panoptic_head = fusion
        if train_panoptic_loss and panoptic_head is None:
            raise ValueError("train_panoptic_loss=True needs an UPSNetFusion: pass panoptic_head=UPSNetFusion(table) "
                             "when the inference fusion is another strategy, or set train_panoptic_loss=False.")
        if panoptic_head is not None and panoptic_head.table != table:
            raise ValueError("panoptic_head and fusion must use the same category table.")
        self.table = table
        self.backbone = backbone
        self.semantic_head = semantic_head
        self.instance_head = instance_head
        self.fusion = fusion
        self.panoptic_head = panoptic_head
        self.loss_weights = loss_weights or LossWeights()
        self.train_panoptic_loss = train_panoptic_loss
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def train_parts(self) -> dict[str, nn.Module]:
        """One network, one optimizer: ``{"model": self}``."""
        return {"model": self}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the normalized input this model expects."""
        return self.backbone.normalize(images)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        """The unknown-sampling generator's state, saved in ``state_dict`` for exact resumption."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generator state saved by :meth:`get_extra_state`."""
        if isinstance(state, dict) and "generator" in state:
            self.generator.set_state(state["generator"].cpu())

    # ------------------------------------------------------------------------------------- training
    def losses(self, images: torch.Tensor, targets: Sequence[TrainTarget]) -> dict[str, torch.Tensor]:
        """The weighted training losses (see the class docstring). Needs training mode."""
        if not self.training:
            raise ValueError("UPSNet.losses needs training mode; call model.train() (eval mode runs inference).")
        padded = pad_images(images, self.backbone.size_divisor)
        batch = prepare_batch(images, targets, padded)
        w = self.loss_weights
        feats = self.backbone(padded)
        sem = self.semantic_head(feats)
        losses = self.instance_head.losses(padded, feats, batch.boxes, batch.labels, batch.masks, batch.sizes)
        if w.semantic:
            losses["semantic"] = self.semantic_head.loss(sem.logits, batch.semantic)
        if w.semantic_roi:
            losses["semantic_roi"] = self.semantic_head.roi_loss(sem.logits, batch.boxes, batch.semantic)
        if self.train_panoptic_loss and w.panoptic:
            losses["panoptic"] = self._panoptic_loss(feats, sem.logits, batch)
        return weighted(losses, w)

    def _panoptic_loss(self, features: dict[str, torch.Tensor], semantic_logits: torch.Tensor,
                       batch: Batch) -> torch.Tensor:
        """Unweighted panoptic loss on ground-truth instances, mean over the batch."""
        head = self.panoptic_head
        assert head is not None
        size = semantic_logits.shape[-2:]
        sem4 = nearest_resize_labels(batch.semantic, size)
        targets = [head.make_targets(sem4[b], nearest_resize_labels(batch.masks[b], size), generator=self.generator)
                   for b in range(semantic_logits.shape[0])]
        boxes = [bx[t.keep] for bx, t in zip(batch.boxes, targets)]
        labels = [lab[t.keep] for lab, t in zip(batch.labels, targets)]
        masks = self.instance_head.mask_logits(features, boxes, labels)
        instances = [Instances(bx, torch.ones(len(bx), device=bx.device), lab, m)
                     for bx, lab, m in zip(boxes, labels, masks)]
        return head.loss(semantic_logits, instances, targets, box_scale=0.25)

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: torch.Tensor,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> list[PanopticPrediction]:
        """Semantic logits, detections and the fusion's result per image (no gradients).

        Args:
            images: ``(B, 3, H, W)`` normalized images.
            image_sizes: Valid ``(h, w)`` of each image; outputs are cropped to it. Default ``(H, W)``.
        """
        return self.network(images, image_sizes).fuse(self.fusion)

    @torch.no_grad()
    def network(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                keep_features: bool = False) -> NetworkOutput:
        """Backbone, semantic head and detections, without fusion (timed apart from it by ``panoptic compare``).

        Args:
            images: ``(B, 3, H, W)`` normalized images.
            image_sizes: Valid ``(h, w)`` of each image. Default ``(H, W)``.
            keep_features: Also return the FPN features.
        """
        sizes = valid_sizes(images, image_sizes)
        padded = pad_images(images, self.backbone.size_divisor)
        feats = self.backbone(padded)
        logits = self._upsampled_semantic(feats, padded)
        instances = self.instance_head.detect(padded, feats, sizes)
        return NetworkOutput(logits, instances, sizes, feats if keep_features else None)

    @torch.no_grad()
    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` semantic logits of ``(B, 3, H, W)`` normalized images: backbone and semantic head only."""
        h, w = images.shape[-2:]
        padded = pad_images(images, self.backbone.size_divisor)
        return self._upsampled_semantic(self.backbone(padded), padded)[..., :h, :w]

    def _upsampled_semantic(self, features: dict[str, torch.Tensor], padded: torch.Tensor) -> torch.Tensor:
        logits = self.semantic_head(features).logits
        return F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)

    def mask_logits(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                    labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The mask head's ``(N, M, M)`` logits of given boxes and labels (see :meth:`InstanceHead.mask_logits`)."""
        return self.instance_head.mask_logits(features, boxes, labels)

    def classify_boxes(self, features: dict[str, torch.Tensor],
                       boxes: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The box head's scores and labels of given boxes (see :meth:`InstanceHead.classify_boxes`)."""
        return self.instance_head.classify_boxes(features, boxes)
