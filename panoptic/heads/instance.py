"""Mask R-CNN instance head composed from torchvision parts, exposing raw 28x28 mask **logits**.

Parts: ``AnchorGenerator`` + ``RPNHead`` + ``RegionProposalNetwork`` on P2..P6; ``RoIHeads`` with
``MultiScaleRoIAlign`` on P2..P5 (torchvision's output; the CPU gradient of :mod:`panoptic.heads._roi_align`),
``TwoMLPHead`` + ``FastRCNNPredictor`` (class-specific boxes) and ``MaskRCNNHeads`` + ``MaskRCNNPredictor``
(class-specific ``2 * mask_roi_size`` masks).

Label convention: torchvision's detector classes are ``0 = background, 1..Nthing``; everything this
module takes or returns uses the library's *thing index* ``0..Nthing-1`` (``detector class - 1``).

* Training (:meth:`InstanceHead.losses`): torchvision's RPN and RoI heads compute the five losses, returned
  as ``rpn_objectness``, ``rpn_box``, ``box_cls``, ``box_reg``, ``mask``.
* :meth:`InstanceHead.mask_logits`: mask logits of any boxes, the channel of each box's class, differentiable
  (UPSNet trains its panoptic head with ground-truth boxes through it).
* Inference (:meth:`InstanceHead.detect`): proposals, box head, torchvision's per-class NMS and score
  threshold (0.05 by default: every detection, the fusion prunes), then :meth:`mask_logits` on the
  detections; returns :class:`~panoptic.structures.Instances` with logits, not probabilities.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from ..structures import Instances
from ._roi_align import MultiScaleRoIAlign

__all__ = [
    "InstanceHead",
    "InstanceHeadConfig",
]

INSTANCE_LOSSES = ("rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask")
"""Names of the instance head's losses, in order."""

_TORCHVISION_NAMES = {"loss_objectness": "rpn_objectness", "loss_rpn_box_reg": "rpn_box",
                      "loss_classifier": "box_cls", "loss_box_reg": "box_reg", "loss_mask": "mask"}


@dataclass(frozen=True)
class InstanceHeadConfig:
    """Sizes and thresholds of :class:`InstanceHead` (defaults: Mask R-CNN / UPSNet for COCO-size images).

    Attributes:
        anchor_sizes: One anchor size per RPN level P2..P6 (UPSNet: 8 x stride).
        aspect_ratios: Anchor aspect ratios (h / w) at every level.
        rpn_pre_nms_top_n_train: Proposals kept per level before NMS, training.
        rpn_post_nms_top_n_train: Proposals kept per image after NMS, training.
        rpn_pre_nms_top_n_test: As above, inference.
        rpn_post_nms_top_n_test: As above, inference.
        rpn_nms_thresh: RPN NMS IoU.
        rpn_fg_iou_thresh: Anchor positive IoU (>=).
        rpn_bg_iou_thresh: Anchor negative IoU (<).
        rpn_batch_size_per_image: Anchors sampled per image for the RPN losses.
        rpn_positive_fraction: Positive share of the sampled anchors.
        box_batch_size_per_image: RoIs sampled per image for the box and mask losses.
        box_positive_fraction: Foreground share of the sampled RoIs.
        box_fg_iou_thresh: RoI foreground IoU (>=).
        box_bg_iou_thresh: RoI background IoU (<).
        box_head_dim: Width of the two fully connected box-head layers.
        box_reg_weights: Box-delta weights ``(wx, wy, ww, wh)``.
        box_roi_size: RoIAlign side for the box head.
        mask_roi_size: RoIAlign side for the mask head; masks are ``2 * mask_roi_size`` (28).
        mask_head_convs: Number of 3x3 convs of the mask head.
        mask_head_dim: Width of the mask head.
        sampling_ratio: RoIAlign sampling ratio.
        score_thresh: Inference: keep detections with ``score > score_thresh``.
        nms_thresh: Inference: per-class NMS IoU.
        detections_per_image: Inference: at most this many detections per image.
    """

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_head_dim: int = 1024
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_roi_size: int = 7
    mask_roi_size: int = 14
    mask_head_convs: int = 4
    mask_head_dim: int = 256
    sampling_ratio: int = 2
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and f.name != "sampling_ratio" and v <= 0:
                raise ValueError(f"InstanceHeadConfig.{f.name} must be positive, got {v}.")
        if not self.anchor_sizes or not self.aspect_ratios:
            raise ValueError("InstanceHeadConfig needs at least one anchor size and one aspect ratio.")

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks (``2 * mask_roi_size``)."""
        return 2 * self.mask_roi_size

    @classmethod
    def light(cls, **overrides: object) -> InstanceHeadConfig:
        """Light heads for 128-256 px images on CPU (the ``*_cpu_small`` models of the synthetic benchmark).

        RPN 300/150 proposals (train) and 150/50 (test), 128 anchors and 64 RoIs sampled per image, a 256-d
        box head, a 2-conv 128-d mask head, 30 detections, anchors 16..256 for small objects. Even so the mask
        head is about half of a ``upsnet_cpu_small`` training step's convolution time at 128 px (its 2 convs and the
        transposed conv run on up to 64 positive RoIs of 14x14; see ``docs/benchmarks.md``).
        """
        base = cls(anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                   rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=128,
                   box_batch_size_per_image=64, box_head_dim=256, mask_head_convs=2, mask_head_dim=128,
                   detections_per_image=30)
        return replace(base, **overrides)  # type: ignore[arg-type]


class InstanceHead(nn.Module):
    """Mask R-CNN heads (RPN, box, mask) on an FPN, from torchvision components.

    Args:
        in_channels: FPN width.
        num_things: Number of thing categories (detector classes without background).
        config: See :class:`InstanceHeadConfig`.
        rpn_features: Feature keys the RPN uses (one per anchor size), finest first.
        roi_features: Feature keys the box and mask RoIAlign use, finest first.

    Raises:
        ValueError: If the anchor sizes do not match the RPN levels, or sizes are not positive.
    """

    def __init__(self, *, in_channels: int, num_things: int, config: InstanceHeadConfig | None = None,
                 rpn_features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6"),
                 roi_features: Sequence[str] = ("p2", "p3", "p4", "p5")) -> None:
        super().__init__()
        self.config = cfg = config or InstanceHeadConfig()
        if num_things <= 0:
            raise ValueError(f"InstanceHead needs num_things >= 1 thing category, got {num_things}.")
        if len(cfg.anchor_sizes) != len(rpn_features):
            raise ValueError(f"InstanceHeadConfig.anchor_sizes has {len(cfg.anchor_sizes)} sizes but the RPN runs on "
                             f"{len(rpn_features)} levels {list(rpn_features)}; give one size per level.")
        self.num_things = num_things
        self.in_channels = in_channels
        self.rpn_features = tuple(rpn_features)
        self.roi_features = list(roi_features)
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                  (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(in_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=cfg.rpn_fg_iou_thresh, bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=cfg.rpn_positive_fraction,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            nms_thresh=cfg.rpn_nms_thresh)
        r = cfg.box_roi_size
        self.roi_heads = RoIHeads(
            box_roi_pool=MultiScaleRoIAlign(self.roi_features, r, cfg.sampling_ratio),
            box_head=TwoMLPHead(in_channels * r * r, cfg.box_head_dim),
            box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_things + 1),
            fg_iou_thresh=cfg.box_fg_iou_thresh, bg_iou_thresh=cfg.box_bg_iou_thresh,
            batch_size_per_image=cfg.box_batch_size_per_image, positive_fraction=cfg.box_positive_fraction,
            bbox_reg_weights=cfg.box_reg_weights, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
            detections_per_img=cfg.detections_per_image,
            mask_roi_pool=MultiScaleRoIAlign(self.roi_features, cfg.mask_roi_size, cfg.sampling_ratio),
            mask_head=MaskRCNNHeads(in_channels, [cfg.mask_head_dim] * cfg.mask_head_convs, 1),
            mask_predictor=MaskRCNNPredictor(cfg.mask_head_dim, cfg.mask_head_dim, num_things + 1))

    # ------------------------------------------------------------------------------------- helpers
    @property
    def mask_size(self) -> int:
        """Side ``M`` of the mask logits (28)."""
        return self.config.mask_size

    def _rpn_inputs(self, images: torch.Tensor, features: Mapping[str, torch.Tensor],
                    image_sizes: Sequence[tuple[int, int]] | None) -> tuple[ImageList, OrderedDict[str, torch.Tensor]]:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}.")
        b, h, w = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
        sizes = [(int(s[0]), int(s[1])) for s in image_sizes] if image_sizes is not None else [(h, w)] * b
        if len(sizes) != b:
            raise ValueError(f"got {len(sizes)} image sizes for a batch of {b} images.")
        missing = [k for k in (*self.rpn_features, *self.roi_features) if k not in features]
        if missing:
            raise ValueError(f"InstanceHead needs feature levels {list(self.rpn_features)}; missing {missing}.")
        return ImageList(images, sizes), OrderedDict((k, features[k]) for k in self.rpn_features)

    def _padded_shapes(self, features: Mapping[str, torch.Tensor]) -> list[tuple[int, int]]:
        """Input size implied by the finest RoI level (its size times its stride 4), once per image."""
        f = features[self.roi_features[0]]
        return [(int(f.shape[-2]) * 4, int(f.shape[-1]) * 4)] * int(f.shape[0])

    # ------------------------------------------------------------------------------------ training
    def losses(self, images: torch.Tensor, features: Mapping[str, torch.Tensor], boxes: Sequence[torch.Tensor],
               labels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
               image_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
        """The five Mask R-CNN losses (unweighted).

        Args:
            images: ``(B, 3, H, W)`` input batch (its size sets the anchor grid).
            features: FPN levels ``(B, C, H/s, W/s)``.
            boxes: ``B`` tensors ``(N_b, 4)`` xyxy ground-truth boxes in input pixels, positive width/height.
            labels: ``B`` tensors ``(N_b,)`` int64 thing indices ``0..num_things-1``.
            masks: ``B`` tensors ``(N_b, H, W)`` bool ground-truth masks.
            image_sizes: Valid ``(h, w)`` of each image (proposals are clipped to it); default ``(H, W)``.

        Returns:
            ``{"rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask"}`` scalars.
        """
        if not self.training:
            raise ValueError("InstanceHead.losses needs training mode (torchvision's RPN and RoI heads sample "
                             "targets only then); call .train() first.")
        image_list, rpn_feats = self._rpn_inputs(images, features, image_sizes)
        if not (len(boxes) == len(labels) == len(masks) == images.shape[0]):
            raise ValueError("boxes, labels and masks need one entry per image.")
        targets = []
        for b, lab, m in zip(boxes, labels, masks):
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_things):
                raise ValueError(f"instance labels must be thing indices 0..{self.num_things - 1}, got "
                                 f"[{int(lab.min())}, {int(lab.max())}].")
            if b.numel() and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
                raise ValueError("ground-truth boxes must have positive width and height; drop empty instances.")
            targets.append({"boxes": b.float(), "labels": lab.long() + 1, "masks": m.to(torch.uint8)})
        proposals, rpn_losses = self.rpn(image_list, rpn_feats, targets)
        _, roi_losses = self.roi_heads(dict(features), proposals, self._padded_shapes(features), targets)
        out = {**rpn_losses, **roi_losses}
        return {_TORCHVISION_NAMES[k]: out[k] for k in _TORCHVISION_NAMES}

    # --------------------------------------------------------------------------------------- masks
    def mask_logits(self, features: Mapping[str, torch.Tensor], boxes_per_image: Sequence[torch.Tensor],
                    labels_per_image: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Mask logits of given boxes, each box's class channel; differentiable.

        Args:
            features: FPN levels ``(B, C, H/s, W/s)``.
            boxes_per_image: ``B`` tensors ``(N_b, 4)`` xyxy in input pixels.
            labels_per_image: ``B`` tensors ``(N_b,)`` int64 thing indices.

        Returns:
            ``B`` tensors ``(N_b, M, M)`` of logits (``M = 28``).
        """
        counts = [int(b.shape[0]) for b in boxes_per_image]
        if len(counts) != len(labels_per_image) or any(int(lab.numel()) != n for lab, n in
                                                        zip(labels_per_image, counts)):
            raise ValueError("mask_logits needs one label per box and one box tensor per image.")
        ref = features[self.roi_features[0]]
        if len(counts) != ref.shape[0]:
            raise ValueError(f"mask_logits got boxes for {len(counts)} images but features for {ref.shape[0]}.")
        m = self.mask_size
        if sum(counts) == 0:
            return [ref.new_zeros((0, m, m)) for _ in counts]
        labels = torch.cat([lab.reshape(-1) for lab in labels_per_image]).long()
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_things:
            raise ValueError(f"mask_logits labels must be thing indices 0..{self.num_things - 1}.")
        rh = self.roi_heads
        x = rh.mask_roi_pool(dict(features), [b.to(ref.dtype) for b in boxes_per_image], self._padded_shapes(features))
        x = rh.mask_predictor(rh.mask_head(x))  # (N, num_things + 1, M, M)
        x = x[torch.arange(x.shape[0], device=x.device), labels.to(x.device) + 1]
        return list(x.split(counts))

    @torch.no_grad()
    def classify_boxes(self, features: Mapping[str, torch.Tensor], boxes_per_image: Sequence[torch.Tensor]
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The box head's most likely thing class of given boxes (background excluded), without regression.

        Used by the "ground-truth boxes" oracle of the ablation: the boxes are given, the classes and scores
        are the model's.

        Args:
            features: FPN levels ``(B, C, H/s, W/s)``.
            boxes_per_image: ``B`` tensors ``(N_b, 4)`` xyxy in input pixels.

        Returns:
            Per image ``(scores (N_b,), labels (N_b,))``: the softmax probability of the best thing class and its
            thing index.
        """
        ref = features[self.roi_features[0]]
        counts = [int(b.shape[0]) for b in boxes_per_image]
        if len(counts) != ref.shape[0]:
            raise ValueError(f"classify_boxes got boxes for {len(counts)} images but features for {ref.shape[0]}.")
        if sum(counts) == 0:
            return [(ref.new_zeros(0), torch.zeros(0, dtype=torch.long, device=ref.device)) for _ in counts]
        rh = self.roi_heads
        x = rh.box_head(rh.box_roi_pool(dict(features), [b.to(ref.dtype) for b in boxes_per_image],
                                        self._padded_shapes(features)))
        class_logits, _ = rh.box_predictor(x)
        probs = class_logits.float().softmax(-1)[:, 1:]  # column 0 is background
        scores, labels = probs.max(-1)
        return list(zip(scores.split(counts), labels.split(counts)))

    # ------------------------------------------------------------------------------------ inference
    def detect(self, images: torch.Tensor, features: Mapping[str, torch.Tensor],
               image_sizes: Sequence[tuple[int, int]] | None = None) -> list[Instances]:
        """Detections with mask logits.

        Args:
            images: ``(B, 3, H, W)`` input batch.
            features: FPN levels.
            image_sizes: Valid ``(h, w)`` per image; boxes are clipped to it. Default ``(H, W)``.

        Returns:
            ``B`` :class:`Instances`: boxes xyxy in input pixels, scores, thing-index labels, ``(N, 28, 28)``
            mask logits, sorted by score (descending), at most ``detections_per_image``.
        """
        image_list, rpn_feats = self._rpn_inputs(images, features, image_sizes)
        was_training = self.training
        self.eval()  # inference-time proposal counts even if called on a model in training mode
        try:
            proposals, _ = self.rpn(image_list, rpn_feats)
            rh = self.roi_heads
            feats = dict(features)
            x = rh.box_head(rh.box_roi_pool(feats, proposals, self._padded_shapes(features)))
            class_logits, box_deltas = rh.box_predictor(x)
            boxes, scores, labels = rh.postprocess_detections(class_logits, box_deltas, proposals,
                                                              image_list.image_sizes)
        finally:
            self.train(was_training)
        things = [lab - 1 for lab in labels]
        masks = self.mask_logits(features, boxes, things)
        out = []
        for b, s, lab, m in zip(boxes, scores, things, masks):
            order = torch.argsort(s, descending=True, stable=True)
            out.append(Instances(b[order].float(), s[order].float(), lab[order].long(), m[order].float()))
        return out
