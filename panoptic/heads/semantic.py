"""UPSNet's semantic head: a deformable-conv sub-network shared over P2..P5, concatenated at 1/4 scale.

Layout (UPSNet ``FCNHead``, paper Fig. 2):

* one sub-network with shared weights runs on each of P2, P3, P4, P5: ``num_layers`` 3x3 layers
  (deformable conv with a zero-initialised offset conv, optional GroupNorm, ReLU); the second-to-last layer
  reduces ``hidden_channels`` to ``out_channels`` (COCO: 256-256-128-128 for 3 layers; Cityscapes:
  256-128-128 for 2 layers);
* each level's output is bilinearly upsampled to the P2 size (1/4 of the input) and the four maps are
  concatenated (``4 * out_channels`` channels, the "feature");
* a 1x1 classifier (init N(0, 0.01), bias 0) gives ``num_classes`` logits, stuff channels first.

Losses:

* :func:`semantic_loss`: pixel cross-entropy, 255 ignored, mean over valid pixels. By default computed at
  the **input resolution** after bilinear upsampling of the 1/4 logits (as the reference); set
  ``SemanticHeadConfig.loss_at_input_resolution=False`` to compare at 1/4 against a nearest-downsampled target
  (16x fewer pixels, cheaper on CPU).
* :meth:`SemanticHead.roi_loss`: RoIAlign 28x28 of the concatenated feature at scale 1/4 on ground-truth
  boxes, the same 1x1 classifier, cross-entropy against the semantic ground truth cropped by the box and
  nearest-resized to 28x28 (mean over valid entries). Computed as RoIAlign of the classifier's output,
  which is the same for boxes inside the image and ~10x cheaper (see :meth:`SemanticHead.roi_logits`).
  RoIAlign uses ``aligned=True`` (half-pixel offset) so that the pooled cells and the target's pixel-centre
  sampling cover the same image area; the reference's ``aligned=False`` kernel shifts the features by half a
  1/4-scale pixel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from ..constants import IGNORE_INDEX
from ._deform import deform_conv2d_sampled
from ._roi_align import roi_align

__all__ = [
    "SemanticHead",
    "SemanticHeadConfig",
]



@dataclass(frozen=True)
class SemanticHeadConfig:
    """Configuration of :class:`SemanticHead`.

    Attributes:
        num_layers: Layers of the shared sub-network, >= 2 (UPSNet: 3 COCO, 2 Cityscapes).
        hidden_channels: Width before the reduction; ``None`` = the FPN width (UPSNet 256).
        out_channels: Width after the reduction at the second-to-last layer (UPSNet 128).
        deformable: Deformable 3x3 convs (UPSNet) or plain 3x3 convs (much faster on CPU).
        norm: ``"none"`` (every released UPSNet config) or ``"group"`` (GroupNorm, 32 groups or fewer).
        roi_size: Side of the RoI-loss patches (28).
        loss_at_input_resolution: Semantic loss at the input size (reference) or at 1/4.
    """

    num_layers: int = 3
    hidden_channels: int | None = None
    out_channels: int = 128
    deformable: bool = True
    norm: Literal["none", "group"] = "none"
    roi_size: int = 28
    loss_at_input_resolution: bool = True

    def __post_init__(self) -> None:
        if self.num_layers < 2:
            raise ValueError(f"SemanticHeadConfig.num_layers must be >= 2 (the reduction sits at the second-to-last "
                             f"layer), got {self.num_layers}.")
        if self.out_channels <= 0 or (self.hidden_channels is not None and self.hidden_channels <= 0):
            raise ValueError("SemanticHeadConfig channel widths must be positive.")
        if self.norm not in ("none", "group"):
            raise ValueError(f"SemanticHeadConfig.norm must be 'none' or 'group', got {self.norm!r}.")


@dataclass
class SemanticOutput:
    """Output of :class:`SemanticHead`.

    Attributes:
        logits: ``(B, num_classes, H/4, W/4)`` semantic logits at the P2 resolution.
        feature: ``(B, 4 * out_channels, H/4, W/4)`` concatenated upsampled features (RoI-loss input).
    """

    logits: torch.Tensor
    feature: torch.Tensor


class _ConvLayer(nn.Module):
    """3x3 (deformable) conv, optional GroupNorm, ReLU."""

    def __init__(self, cin: int, cout: int, *, deformable: bool, norm: str) -> None:
        super().__init__()
        self.offset: nn.Conv2d | None = None
        if deformable:
            self.offset = nn.Conv2d(cin, 2 * 3 * 3, 3, padding=1)
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)
            self.conv: nn.Module = DeformConv2d(cin, cout, 3, padding=1, bias=norm == "none")
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.norm = nn.GroupNorm(_groups(cout), cout) if norm == "group" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset is None:
            y = self.conv(x)
        elif x.device.type == "cpu":  # same result, 2-3x faster than torchvision's CPU kernel (see ._deform)
            y = deform_conv2d_sampled(x, self.offset(x), self.conv.weight, self.conv.bias, padding=1)
        else:
            y = self.conv(x, self.offset(x))
        return F.relu(self.norm(y))


def _groups(channels: int, max_groups: int = 32) -> int:
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


class SemanticHead(nn.Module):
    """Shared (deformable) sub-network over P2..P5, concatenation at 1/4 scale, 1x1 classifier.

    Args:
        in_channels: FPN width.
        num_classes: ``Nstuff + Nthing`` (stuff channels first).
        config: See :class:`SemanticHeadConfig`.
        in_features: Keys of P2..P5 in the feature dict, finest first.

    Example:
        >>> head = SemanticHead(in_channels=16, num_classes=5, config=SemanticHeadConfig(num_layers=2,
        ...                     out_channels=8, deformable=False))
        >>> feats = {f"p{k}": torch.zeros(1, 16, 64 // 2**k, 64 // 2**k) for k in range(2, 6)}
        >>> out = head(feats)
        >>> tuple(out.logits.shape), tuple(out.feature.shape)
        ((1, 5, 16, 16), (1, 32, 16, 16))
    """

    def __init__(self, *, in_channels: int, num_classes: int, config: SemanticHeadConfig | None = None,
                 in_features: Sequence[str] = ("p2", "p3", "p4", "p5")) -> None:
        super().__init__()
        if num_classes <= 0 or in_channels <= 0:
            raise ValueError(f"SemanticHead needs positive in_channels and num_classes, got {in_channels}, "
                             f"{num_classes}.")
        self.config = cfg = config or SemanticHeadConfig()
        self.in_features = tuple(in_features)
        self.in_channels = in_channels
        self.num_classes = num_classes
        hidden = cfg.hidden_channels or in_channels
        widths = [hidden] * (cfg.num_layers - 2) + [cfg.out_channels, cfg.out_channels]
        layers, cin = [], in_channels
        for cout in widths:
            layers.append(_ConvLayer(cin, cout, deformable=cfg.deformable, norm=cfg.norm))
            cin = cout
        self.subnet = nn.Sequential(*layers)
        self.feature_channels = cfg.out_channels * len(self.in_features)
        self.classifier = nn.Conv2d(self.feature_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> SemanticOutput:
        """Semantic logits at 1/4 resolution.

        Args:
            features: FPN levels; ``in_features`` (P2..P5) are used, ``(B, in_channels, H/s, W/s)``.

        Returns:
            :class:`SemanticOutput` with ``logits (B, num_classes, H/4, W/4)`` and the concatenated feature.
        """
        missing = [k for k in self.in_features if k not in features]
        if missing:
            raise ValueError(f"SemanticHead needs feature levels {list(self.in_features)}; missing {missing}.")
        size = features[self.in_features[0]].shape[-2:]
        outs = []
        for k in self.in_features:
            y = self.subnet(features[k])
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        feature = torch.cat(outs, dim=1)
        return SemanticOutput(self.classifier(feature), feature)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy; see :func:`semantic_loss` (resolution from the config)."""
        return semantic_loss(logits, target, at_input_resolution=self.config.loss_at_input_resolution)

    def roi_logits(self, logits: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-box ``(N, num_classes, R, R)`` logits: RoIAlign (``R = roi_size``, scale 1/4) of the semantic logits.

        UPSNet pools the concatenated feature and applies the 1x1 classifier; pooling the classifier's output
        instead gives the same values (the classifier is a per-pixel affine map and RoIAlign a weighted
        average whose weights sum to 1 for boxes inside the image), but pools ``C`` instead of
        ``4 * out_channels`` channels (about 10x cheaper on CPU).

        Args:
            logits: ``(B, num_classes, H/4, W/4)`` from :meth:`forward`.
            boxes: ``B`` tensors ``(N_b, 4)`` xyxy in input pixels.
        """
        r = self.config.roi_size
        return roi_align(logits, [b.to(logits.dtype) for b in boxes], output_size=(r, r), spatial_scale=0.25,
                         sampling_ratio=2, aligned=True)

    def roi_loss(self, logits: torch.Tensor, boxes: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """RoI semantic loss (UPSNet ``fcn_with_roi_loss``).

        Args:
            logits: ``(B, num_classes, H/4, W/4)`` semantic logits.
            boxes: ``B`` tensors ``(N_b, 4)`` ground-truth xyxy boxes in input pixels.
            target: ``(B, H, W)`` int64 semantic ground truth, 255 = ignore.

        Returns:
            Scalar cross-entropy over all valid entries of all ``R x R`` patches (0, still differentiable,
            when there is no box or no valid entry).
        """
        if not (len(boxes) == target.shape[0] == logits.shape[0]):
            raise ValueError(f"roi_loss got {len(boxes)} box tensors for a batch of {logits.shape[0]} logits "
                             f"and {target.shape[0]} targets.")
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"roi_loss needs (B, {self.num_classes}, h, w) semantic logits, "
                             f"got {tuple(logits.shape)}.")
        patches = self.roi_logits(logits, boxes)
        crops = torch.cat([box_target_crops(t, b, self.config.roi_size) for t, b in zip(target, boxes)])
        return _masked_cross_entropy(patches, crops)


def box_target_crops(target: torch.Tensor, boxes: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Crop a label map by each box and nearest-resize the crop to ``size x size``.

    Output cell ``(i, j)`` takes the label at pixel ``(floor(y1 + (i + 0.5) h / size),
    floor(x1 + (j + 0.5) w / size))`` (pixel-centre sampling, clamped to the map), which for integer boxes
    is exactly cropping ``target[y1:y2, x1:x2]`` then nearest resizing.

    Args:
        target: ``(H, W)`` int64 labels.
        boxes: ``(N, 4)`` xyxy in pixels of ``target``.
        size: Output side.

    Returns:
        ``(N, size, size)`` int64.
    """
    h, w = target.shape
    if boxes.numel() == 0:
        return target.new_zeros((0, size, size))
    b = boxes.to(torch.float64)
    cells = (torch.arange(size, device=target.device, dtype=torch.float64) + 0.5) / size
    ys = (b[:, 1:2] + cells[None] * (b[:, 3:4] - b[:, 1:2])).floor().long().clamp_(0, h - 1)
    xs = (b[:, 0:1] + cells[None] * (b[:, 2:3] - b[:, 0:1])).floor().long().clamp_(0, w - 1)
    return target[ys[:, :, None], xs[:, None, :]]


def _masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over non-ignored entries / their count (0 when there is none)."""
    total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, *, at_input_resolution: bool = True) -> torch.Tensor:
    """Pixel cross-entropy with 255 ignored, mean over valid pixels.

    Args:
        logits: ``(B, C, h, w)`` (the head's 1/4-resolution output).
        target: ``(B, H, W)`` int64 contiguous ids, 255 = ignore.
        at_input_resolution: Upsample the logits bilinearly to ``(H, W)`` (reference) instead of
            nearest-downsampling the target to ``(h, w)``.

    Returns:
        Scalar loss (0, still differentiable, if every pixel is ignored).
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"semantic_loss needs logits (B, C, h, w) and target (B, H, W) with the same B, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}.")
    t = target.long()
    bad = (t != IGNORE_INDEX) & ((t < 0) | (t >= logits.shape[1]))
    if bad.any():
        raise ValueError(f"semantic target has labels outside 0..{logits.shape[1] - 1} and 255; the category table "
                         "and the head's num_classes must agree.")
    if at_input_resolution:
        if logits.shape[-2:] != t.shape[-2:]:
            logits = F.interpolate(logits, size=t.shape[-2:], mode="bilinear", align_corners=False)
    else:
        t = nearest_resize_labels(t, logits.shape[-2:])
    return _masked_cross_entropy(logits, t)


def nearest_resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest (pixel-centre) resize of ``(..., H, W)`` labels or masks to ``(..., h, w)``, any dtype."""
    h, w = labels.shape[-2:]
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        return labels
    rows = ((torch.arange(oh, device=labels.device, dtype=torch.float64) + 0.5) * (h / oh)).floor().long()
    cols = ((torch.arange(ow, device=labels.device, dtype=torch.float64) + 0.5) * (w / ow)).floor().long()
    return labels[..., rows.clamp_(0, h - 1)[:, None], cols.clamp_(0, w - 1)[None, :]]
