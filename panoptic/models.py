"""Panoptic models assembled by constructor injection, and named builders.

* :class:`UPSNet`: backbone + FPN, :class:`~panoptic.heads.SemanticHead`, :class:`~panoptic.heads.InstanceHead`
  and any :class:`~panoptic.fusion.PanopticFusion` for inference; trained with the eight UPSNet losses, the
  panoptic one through :class:`~panoptic.fusion.UPSNetFusion` on ground-truth boxes (paper §3.1-3.2).
* :class:`MaskRCNN`, :class:`MRCNNPSP`: the baseline of a separately trained Mask R-CNN and PSPNet combined
  by :class:`~panoptic.fusion.HeuristicFusion`.
* Builders (:data:`MODELS`): ``upsnet_r50_fpn``, ``upsnet_c``, ``upsnet_cp``, ``mrcnn_psp`` and the CPU presets
  ``upsnet_cpu_small``, ``upsnet_c_cpu_small``, ``upsnet_cp_cpu_small``, ``mrcnn_psp_cpu_small``.

Conventions shared by every model here:

* ``images`` are ``(B, 3, H, W)`` float, normalized with the backbone's statistics (every model has
  ``normalize(images01)``, see :meth:`panoptic.backbone.FPNBackbone.normalize`); sides that are not
  multiples of 32 are padded (bottom/right, zeros) inside the model, and outputs are cropped back.
* Training mode: ``model(images, targets)`` returns a dict of weighted scalar losses (sum them to train).
  ``targets`` are :class:`~panoptic.data.targets.PanopticTarget` (or anything with ``semantic (H, W)``,
  ``boxes (N, 4)``, ``labels (N,)``, ``masks (N, H, W)`` and optionally ``image_size``).
* Eval mode: ``model(images, image_sizes=None)`` returns one :class:`PanopticPrediction` per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BackboneConfig, FPNBackbone
from .categories import CategoryTable
from .fusion import HeuristicFusion, PanopticFusion, UPSNetFusion
from .heads.instance import InstanceHead, InstanceHeadConfig
from .heads.psp import PSPConfig, PSPNet
from .heads.semantic import SemanticHead, SemanticHeadConfig, nearest_resize_labels
from .structures import Instances, PanopticResult

__all__ = [
    "MODELS",
    "MRCNNPSP",
    "UPSNET_LOSSES",
    "LossWeights",
    "MaskRCNN",
    "NetworkOutput",
    "PanopticPrediction",
    "TrainTarget",
    "UPSNet",
    "build_model",
    "fuse_outputs",
    "mrcnn_psp",
    "mrcnn_psp_cpu_small",
    "upsnet_c",
    "upsnet_c_cpu_small",
    "upsnet_cp",
    "upsnet_cp_cpu_small",
    "upsnet_cpu_small",
    "upsnet_r50_fpn",
]

UPSNET_LOSSES = ("rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask", "semantic", "semantic_roi", "panoptic")
"""The eight UPSNet losses, in order."""

DatasetPreset = Literal["coco", "cityscapes"]
IGNORE = 255


# ==================================================================================== shared types
class TrainTarget(Protocol):
    """What a training target must provide (:class:`~panoptic.data.targets.PanopticTarget` does)."""

    semantic: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class LossWeights:
    """Weights of the eight UPSNet losses (the model returns weighted losses).

    A weight of 0 skips that loss (it is not computed and its key is absent).

    Attributes:
        rpn_objectness: RPN objectness.
        rpn_box: RPN box regression.
        box_cls: Box classification.
        box_reg: Box regression.
        mask: Mask.
        semantic: Semantic pixel cross-entropy (``fcn_loss_weight``).
        semantic_roi: Semantic RoI loss (COCO: ``0.2 * fcn_loss_weight``).
        panoptic: Panoptic head loss.
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

    @classmethod
    def coco(cls) -> LossWeights:
        """UPSNet COCO configs: semantic 0.2, semantic RoI 0.04, panoptic 0.1, others 1."""
        return cls(semantic=0.2, semantic_roi=0.04, panoptic=0.1)

    @classmethod
    def cityscapes(cls) -> LossWeights:
        """UPSNet Cityscapes configs: semantic 1.0, no semantic RoI loss, panoptic 0.5, others 1."""
        return cls(semantic=1.0, semantic_roi=0.0, panoptic=0.5)

    @classmethod
    def preset(cls, dataset: str) -> LossWeights:
        """``"coco"`` or ``"cityscapes"``."""
        if dataset not in ("coco", "cityscapes"):
            raise ValueError(f"unknown loss-weight preset {dataset!r}; use 'coco' or 'cityscapes'.")
        return cls.coco() if dataset == "coco" else cls.cityscapes()

    def as_dict(self) -> dict[str, float]:
        """``{loss name: weight}``."""
        return asdict(self)


@dataclass
class NetworkOutput:
    """The networks' outputs for a batch, before any fusion (what :meth:`UPSNet.network` returns).

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


# ======================================================================================== helpers
def _pad_images(images: torch.Tensor, divisor: int) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) float tensor, got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be float (normalized), got {images.dtype}.")
    h, w = images.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(images, (0, pw, 0, ph)) if ph or pw else images


def _image_sizes(images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    b, h, w = images.shape[0], int(images.shape[-2]), int(images.shape[-1])
    if image_sizes is None:
        return [(h, w)] * b
    sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
    if len(sizes) != b:
        raise ValueError(f"got {len(sizes)} image sizes for a batch of {b} images.")
    for s in sizes:
        if not (0 < s[0] <= h and 0 < s[1] <= w):
            raise ValueError(f"image size {s} must be positive and fit in the {h}x{w} batch.")
    return sizes


@dataclass
class _Batch:
    """Training targets as padded tensors; instances with empty boxes removed."""

    semantic: torch.Tensor  # (B, H, W) int64
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: list[torch.Tensor]
    sizes: list[tuple[int, int]]


def _prepare_batch(images: torch.Tensor, targets: Sequence[TrainTarget], padded: torch.Tensor) -> _Batch:
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
        sems.append(F.pad(sem.to(dev).long(), (0, pw, 0, ph), value=IGNORE))
        boxes.append(bx[keep])
        labels.append(t.labels.to(dev).long()[keep])
        masks.append(F.pad(m.to(dev).bool()[keep], (0, pw, 0, ph), value=False))
        size = getattr(t, "image_size", None) or (h, w)
        sizes.append((min(int(size[0]), h), min(int(size[1]), w)))
    return _Batch(torch.stack(sems), boxes, labels, masks, sizes)


def _weighted(losses: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    w = weights.as_dict()
    return {k: v * w[k] for k, v in losses.items() if w[k] != 0}


class _TrainOrPredict:
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


# ========================================================================================= UPSNet
class UPSNet(_TrainOrPredict, nn.Module):
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

    def __init__(self, *, backbone: FPNBackbone, semantic_head: SemanticHead, instance_head: InstanceHead,
                 fusion: PanopticFusion, loss_weights: LossWeights | None = None, train_panoptic_loss: bool = True,
                 panoptic_head: UPSNetFusion | None = None, seed: int = 0) -> None:
        super().__init__()
        table = fusion.table
        _check_table(table, semantic_head.num_classes, instance_head.num_things)
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
        padded = _pad_images(images, self.backbone.size_divisor)
        batch = _prepare_batch(images, targets, padded)
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
        return _weighted(losses, w)

    def _panoptic_loss(self, features: dict[str, torch.Tensor], semantic_logits: torch.Tensor,
                       batch: _Batch) -> torch.Tensor:
        """Unweighted panoptic loss on ground-truth instances, mean over the batch."""
        head = self.panoptic_head
        assert head is not None
        size = semantic_logits.shape[-2:]
        sem4 = nearest_resize_labels(batch.semantic, size)
        keeps = []
        targets = []
        for b in range(semantic_logits.shape[0]):
            pt = head.make_targets(sem4[b], nearest_resize_labels(batch.masks[b], size), generator=self.generator)
            keeps.append(pt.keep)
            targets.append(pt.target)
        boxes = [bx[k] for bx, k in zip(batch.boxes, keeps)]
        labels = [lab[k] for lab, k in zip(batch.labels, keeps)]
        masks = self.instance_head.mask_logits(features, boxes, labels)
        losses = []
        for b in range(semantic_logits.shape[0]):
            inst = Instances(boxes[b], torch.ones(len(boxes[b]), device=boxes[b].device), labels[b], masks[b])
            logits = head.panoptic_logits(semantic_logits[b], inst, box_scale=0.25)
            losses.append(head.panoptic_loss(logits, targets[b]))
        return torch.stack(losses).mean()

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
        sizes = _image_sizes(images, image_sizes)
        padded = _pad_images(images, self.backbone.size_divisor)
        feats = self.backbone(padded)
        logits = self.semantic_head(feats).logits
        instances = self.instance_head.detect(padded, feats, sizes)
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return NetworkOutput(logits, instances, sizes, feats if keep_features else None)


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


def _check_table(table: CategoryTable, num_classes: int, num_things: int) -> None:
    if num_classes != table.num_classes:
        raise ValueError(f"the semantic model predicts {num_classes} classes but the category table has "
                         f"{table.num_classes} ({table.num_stuff} stuff + {table.num_things} things).")
    if num_things != table.num_things:
        raise ValueError(f"the instance head predicts {num_things} thing classes but the category table has "
                         f"{table.num_things}.")


# ================================================================================ MR-CNN-PSP
class MaskRCNN(_TrainOrPredict, nn.Module):
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

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the normalized input this model expects."""
        return self.backbone.normalize(images)

    def losses(self, images: torch.Tensor, targets: Sequence[TrainTarget]) -> dict[str, torch.Tensor]:
        """Weighted ``rpn_objectness``, ``rpn_box``, ``box_cls``, ``box_reg``, ``mask``."""
        if not self.training:
            raise ValueError("MaskRCNN.losses needs training mode; call model.train().")
        padded = _pad_images(images, self.backbone.size_divisor)
        batch = _prepare_batch(images, targets, padded)
        feats = self.backbone(padded)
        losses = self.instance_head.losses(padded, feats, batch.boxes, batch.labels, batch.masks, batch.sizes)
        return _weighted(losses, self.loss_weights)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> list[Instances]:
        """Detections with mask logits per image, boxes clipped to the valid size."""
        sizes = _image_sizes(images, image_sizes)
        padded = _pad_images(images, self.backbone.size_divisor)
        return self.instance_head.detect(padded, self.backbone(padded), sizes)


class MRCNNPSP(_TrainOrPredict, nn.Module):
    """MR-CNN-PSP: a separately trained :class:`MaskRCNN` and :class:`~panoptic.heads.PSPNet`, fused at inference.

    Train the parts with separate optimizers: ``model.detector(images, targets)`` and
    ``model.semantic(images, targets)`` each return their own loss dict (``model(images, targets)`` returns
    both merged, for convenience). Eval mode: ``model(images, image_sizes)`` -> :class:`PanopticPrediction`.

    Args:
        detector: The Mask R-CNN.
        semantic: The PSP semantic model (``num_classes = table.num_classes``).
        fusion: Fusion used at inference (usually :class:`HeuristicFusion`).
    """

    def __init__(self, *, detector: MaskRCNN, semantic: PSPNet, fusion: PanopticFusion) -> None:
        super().__init__()
        _check_table(fusion.table, semantic.num_classes, detector.instance_head.num_things)
        bb = detector.backbone
        same = torch.allclose(bb.pixel_mean, semantic.pixel_mean) and torch.allclose(bb.pixel_std, semantic.pixel_std)
        if not same:
            raise ValueError("the detector and the semantic model normalize images differently; both parts take the "
                             "same input, so use backbones with the same timm pixel mean and std.")
        self.table = fusion.table
        self.detector = detector
        self.semantic = semantic
        self.fusion = fusion

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
        sizes = _image_sizes(images, image_sizes)
        padded = _pad_images(images, self.detector.backbone.size_divisor)
        feats = self.detector.backbone(padded)
        instances = self.detector.instance_head.detect(padded, feats, sizes)
        logits = self.semantic.logits(images)
        return NetworkOutput(logits, instances, sizes, feats if keep_features else None)


# ===================================================================================== builders
def _dataset_defaults(dataset: str) -> dict[str, Any]:
    if dataset not in ("coco", "cityscapes"):
        raise ValueError(f"unknown dataset preset {dataset!r}; use 'coco' or 'cityscapes'.")
    coco = dataset == "coco"
    return {"gap": coco, "sem_layers": 3 if coco else 2, "stuff_area_limit": 4096 if coco else 2048,
            "weights": LossWeights.preset(dataset)}


def _upsnet(table: CategoryTable, *, backbone: BackboneConfig, semantic: SemanticHeadConfig,
            instance: InstanceHeadConfig, fusion: PanopticFusion, panoptic_head: UPSNetFusion | None,
            loss_weights: LossWeights, train_panoptic_loss: bool, seed: int) -> UPSNet:
    bb = FPNBackbone(backbone)
    return UPSNet(backbone=bb,
                  semantic_head=SemanticHead(in_channels=bb.out_channels, num_classes=table.num_classes,
                                             config=semantic),
                  instance_head=InstanceHead(in_channels=bb.out_channels, num_things=table.num_things,
                                             config=instance),
                  fusion=fusion, loss_weights=loss_weights, train_panoptic_loss=train_panoptic_loss,
                  panoptic_head=panoptic_head, seed=seed)


def upsnet_r50_fpn(table: CategoryTable, pretrained: bool = False, *, dataset: DatasetPreset = "coco",
                   backbone: str = "resnet50", fusion: PanopticFusion | None = None,
                   loss_weights: LossWeights | None = None, train_panoptic_loss: bool = True,
                   heuristic_test: bool = False, seed: int = 0) -> UPSNet:
    """UPSNet with a ResNet-50-FPN (reference sizes: FPN 256, frozen BN, full Mask R-CNN heads).

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights for the backbone.
        dataset: ``"coco"`` (GAP context, 3-layer semantic head, weights 0.2/0.04/0.1, stuff area 4096) or
            ``"cityscapes"`` (no GAP, 2 layers, weights 1.0/0/0.5, stuff area 2048).
        backbone: timm model name.
        fusion: Inference fusion; default :class:`UPSNetFusion` (or :class:`HeuristicFusion` with
            ``heuristic_test``) with the dataset's stuff area limit.
        loss_weights: Override the dataset's loss weights.
        train_panoptic_loss: Train the panoptic loss.
        heuristic_test: Default fusion = ``HeuristicFusion(flavor="upsnet")`` (UPSNet-C / UPSNet-CP).
        seed: Seed of the unknown-instance sampling.
    """
    d = _dataset_defaults(dataset)
    head = UPSNetFusion(table, stuff_area_limit=d["stuff_area_limit"])
    if fusion is None:
        fusion = HeuristicFusion(table, "upsnet", stuff_area_limit=d["stuff_area_limit"]) if heuristic_test else head
    return _upsnet(table, backbone=BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=True,
                                                  out_channels=256, gap_context=d["gap"]),
                   semantic=SemanticHeadConfig(num_layers=d["sem_layers"]), instance=InstanceHeadConfig(),
                   fusion=fusion, panoptic_head=head if train_panoptic_loss else None,
                   loss_weights=loss_weights or d["weights"], train_panoptic_loss=train_panoptic_loss, seed=seed)


def upsnet_c(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """UPSNet-C: trained without the panoptic loss, tested with :class:`HeuristicFusion` (``"upsnet"`` flavor).

    Keyword arguments as :func:`upsnet_r50_fpn`.
    """
    kwargs.setdefault("heuristic_test", True)
    return upsnet_r50_fpn(table, pretrained, train_panoptic_loss=False, **kwargs)


def upsnet_cp(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """UPSNet-CP: trained with the panoptic loss, tested with :class:`HeuristicFusion` (``"upsnet"`` flavor).

    The same weights as UPSNet: load an UPSNet checkpoint into it. Keyword arguments as :func:`upsnet_r50_fpn`.
    """
    kwargs.setdefault("heuristic_test", True)
    return upsnet_r50_fpn(table, pretrained, train_panoptic_loss=True, **kwargs)


def mrcnn_psp(table: CategoryTable, pretrained: bool = False, *, dataset: DatasetPreset = "coco",
              backbone: str = "resnet50", fusion: PanopticFusion | None = None) -> MRCNNPSP:
    """MR-CNN-PSP: ResNet-50-FPN Mask R-CNN + dilated ResNet-50 PSPNet, :class:`HeuristicFusion` at test.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights for both backbones.
        dataset: Sets the fusion's stuff area limit (4096 COCO / 2048 Cityscapes).
        backbone: timm model name of both backbones.
        fusion: Inference fusion; default ``HeuristicFusion(flavor="upsnet")``.
    """
    d = _dataset_defaults(dataset)
    bb = FPNBackbone(BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=True, gap_context=False))
    detector = MaskRCNN(backbone=bb, instance_head=InstanceHead(in_channels=bb.out_channels,
                                                                num_things=table.num_things))
    semantic = PSPNet(num_classes=table.num_classes, config=PSPConfig(backbone=backbone, pretrained=pretrained))
    fusion = fusion or HeuristicFusion(table, "upsnet", stuff_area_limit=d["stuff_area_limit"])
    return MRCNNPSP(detector=detector, semantic=semantic, fusion=fusion)


# ---------------------------------------------------------------------------------- CPU presets
SMALL_BACKBONE = "resnet18"
SMALL_FPN_CHANNELS = 64
SMALL_STUFF_AREA = 128
"""Stuff area limit of the small presets: COCO's 4096 px scaled from ~1e6 px images to 192x192 ones."""


def _small_weights() -> LossWeights:
    # COCO's ratios (RoI = 0.2 x semantic) with the semantic weight at 1 as in the Cityscapes configs: a backbone
    # trained from scratch on a few thousand images needs the full semantic signal.
    return LossWeights(semantic=1.0, semantic_roi=0.2, panoptic=0.5)


def upsnet_cpu_small(table: CategoryTable, pretrained: bool = False, *, backbone: str = SMALL_BACKBONE,
                     fpn_channels: int = SMALL_FPN_CHANNELS, deformable: bool = False,
                     fusion: PanopticFusion | None = None, loss_weights: LossWeights | None = None,
                     train_panoptic_loss: bool = True, heuristic_test: bool = False,
                     stuff_area_limit: int = SMALL_STUFF_AREA, seed: int = 0) -> UPSNet:
    """UPSNet sized to train in minutes on 2 CPU cores with 128-256 px images.

    resnet18 (trainable batch norm: no pretrained statistics to freeze), FPN 64 with GAP context, a 2-layer
    semantic head 64 -> 32 -> 32 (plain 3x3 convs by default, the cheapest on a CPU; ``deformable=True`` restores
    UPSNet's deformable ones, which run on the CPU through :mod:`panoptic.heads.deform`), light Mask R-CNN heads
    (:meth:`InstanceHeadConfig.light`), semantic loss at 1/4 resolution.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights.
        backbone: timm model name.
        fpn_channels: FPN width.
        deformable: Deformable convs in the semantic head.
        fusion: Inference fusion; default :class:`UPSNetFusion` (or the ``"upsnet"`` :class:`HeuristicFusion`
            with ``heuristic_test``), stuff area ``stuff_area_limit``.
        loss_weights: Default semantic 1.0, semantic RoI 0.2, panoptic 0.5, others 1.
        train_panoptic_loss: Train the panoptic loss.
        heuristic_test: See ``fusion``.
        stuff_area_limit: Stuff area threshold of the default fusions.
        seed: Seed of the unknown-instance sampling.
    """
    head = UPSNetFusion(table, stuff_area_limit=stuff_area_limit)
    if fusion is None:
        fusion = HeuristicFusion(table, "upsnet", stuff_area_limit=stuff_area_limit) if heuristic_test else head
    return _upsnet(table, backbone=BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=False,
                                                  out_channels=fpn_channels, gap_context=True),
                   semantic=SemanticHeadConfig(num_layers=2, out_channels=max(fpn_channels // 2, 1),
                                               deformable=deformable, loss_at_input_resolution=False),
                   instance=InstanceHeadConfig.light(), fusion=fusion,
                   panoptic_head=head if train_panoptic_loss else None, loss_weights=loss_weights or _small_weights(),
                   train_panoptic_loss=train_panoptic_loss, seed=seed)


def upsnet_c_cpu_small(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """:func:`upsnet_cpu_small` trained without the panoptic loss, tested with :class:`HeuristicFusion`."""
    kwargs.setdefault("heuristic_test", True)
    return upsnet_cpu_small(table, pretrained, train_panoptic_loss=False, **kwargs)


def upsnet_cp_cpu_small(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """:func:`upsnet_cpu_small` trained with the panoptic loss, tested with :class:`HeuristicFusion`."""
    kwargs.setdefault("heuristic_test", True)
    return upsnet_cpu_small(table, pretrained, train_panoptic_loss=True, **kwargs)


def mrcnn_psp_cpu_small(table: CategoryTable, pretrained: bool = False, *, backbone: str = SMALL_BACKBONE,
                        fpn_channels: int = SMALL_FPN_CHANNELS, psp_output_stride: int = 8,
                        fusion: PanopticFusion | None = None, stuff_area_limit: int = SMALL_STUFF_AREA) -> MRCNNPSP:
    """MR-CNN-PSP sized like :func:`upsnet_cpu_small`: resnet18 Mask R-CNN (FPN 64, light heads) + resnet18 PSP.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights.
        backbone: timm model name of both parts.
        fpn_channels: FPN width of the detector.
        psp_output_stride: Dilation of the PSP backbone (8 as PSPNet; 16 is ~2x cheaper on CPU).
        fusion: Inference fusion; default ``HeuristicFusion(flavor="upsnet")``.
        stuff_area_limit: Stuff area threshold of the default fusion.
    """
    bb = FPNBackbone(BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=False,
                                    out_channels=fpn_channels, gap_context=False))
    detector = MaskRCNN(backbone=bb, instance_head=InstanceHead(in_channels=bb.out_channels,
                                                                num_things=table.num_things,
                                                                config=InstanceHeadConfig.light()))
    semantic = PSPNet(num_classes=table.num_classes,
                      config=PSPConfig(backbone=backbone, pretrained=pretrained, output_stride=psp_output_stride,
                                       head_channels=128))
    fusion = fusion or HeuristicFusion(table, "upsnet", stuff_area_limit=stuff_area_limit)
    return MRCNNPSP(detector=detector, semantic=semantic, fusion=fusion)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "upsnet_r50_fpn": upsnet_r50_fpn,
    "upsnet_c": upsnet_c,
    "upsnet_cp": upsnet_cp,
    "mrcnn_psp": mrcnn_psp,
    "upsnet_cpu_small": upsnet_cpu_small,
    "upsnet_c_cpu_small": upsnet_c_cpu_small,
    "upsnet_cp_cpu_small": upsnet_cp_cpu_small,
    "mrcnn_psp_cpu_small": mrcnn_psp_cpu_small,
}
"""Builder registry for the command line: name -> ``builder(table, pretrained=False, **kwargs)``."""


def build_model(name: str, table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.")
    return MODELS[name](table, pretrained, **kwargs)
