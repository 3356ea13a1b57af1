"""A PSPNet-style semantic model: dilated timm backbone + pyramid pooling module + classifier.

The semantic half of the MR-CNN-PSP baseline (Kirillov et al. combine a separately trained Mask R-CNN and
PSPNet). The backbone is any timm model, dilated with ``output_stride`` where timm supports it (ResNets,
MobileNets, EfficientNets, ...; other models keep their native stride, which is recorded in
:attr:`PSPNet.feature_stride`). The pyramid pooling module average-pools the last feature map into
``1x1, 2x2, 3x3, 6x6`` bins, reduces each with a 1x1 conv, upsamples them bilinearly back and concatenates them
with the feature; a 3x3 conv and a 1x1 classifier follow, and the logits are bilinearly upsampled to the input.
The head uses GroupNorm (works for any batch size, including the 1x1 bin with batch 1); the PSPNet paper's
auxiliary loss is not used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import freeze_batch_norm, timm_features
from .semantic import semantic_loss

__all__ = [
    "PSPConfig",
    "PSPNet",
]


@dataclass(frozen=True)
class PSPConfig:
    """Configuration of :class:`PSPNet`.

    Attributes:
        backbone: timm model name (``features_only``); the last feature level feeds the head.
        pretrained: Load timm's pretrained weights.
        frozen_bn: Convert the backbone's batch norms to ``FrozenBatchNorm2d``.
        output_stride: Dilate the backbone to this stride (8 in PSPNet) where timm supports it.
        bins: Pyramid pooling grid sizes.
        ppm_channels: Channels of each pooled branch; ``None`` = backbone channels / number of bins.
        head_channels: Width of the 3x3 conv after the pyramid pooling (PSPNet: 512).
        dropout: Dropout before the classifier (PSPNet: 0.1).
    """

    backbone: str = "resnet50"
    pretrained: bool = False
    frozen_bn: bool = False
    output_stride: int = 8
    bins: tuple[int, ...] = (1, 2, 3, 6)
    ppm_channels: int | None = None
    head_channels: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"PSPConfig.output_stride must be 8, 16 or 32, got {self.output_stride}.")
        if not self.bins or min(self.bins) <= 0:
            raise ValueError(f"PSPConfig.bins must be positive grid sizes, got {self.bins}.")
        if self.head_channels <= 0 or (self.ppm_channels is not None and self.ppm_channels <= 0):
            raise ValueError("PSPConfig channel widths must be positive.")


def _gn(channels: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class PyramidPooling(nn.Module):
    """Pyramid pooling module: ``[x, up(conv(pool_b(x))) for b in bins]`` concatenated.

    Args:
        in_channels: Channels of ``x``.
        bins: Pooling grid sizes.
        branch_channels: Channels of each pooled branch.
    """

    def __init__(self, in_channels: int, bins: Sequence[int], branch_channels: int) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, branch_channels, 1, bias=False), _gn(branch_channels), nn.ReLU())
            for _ in self.bins)
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C + len(bins) * branch_channels, h, w)``."""
        size = x.shape[-2:]
        outs = [x]
        for b, branch in zip(self.bins, self.branches):
            y = branch(F.adaptive_avg_pool2d(x, b))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


class PSPNet(nn.Module):
    """Dilated timm backbone + :class:`PyramidPooling` + classifier; logits at the input resolution.

    ``forward(images)`` returns ``(B, num_classes, H, W)`` logits; ``forward(images, targets)`` in training
    mode returns ``{"semantic": loss}`` (cross-entropy, 255 ignored, mean over valid pixels), so it trains
    with its own optimizer like any loss-dict model.

    Args:
        num_classes: ``Nstuff + Nthing`` (stuff first).
        config: See :class:`PSPConfig`.

    Example:
        >>> net = PSPNet(num_classes=4, config=PSPConfig(backbone="resnet18", head_channels=16))
        >>> tuple(net.eval()(torch.zeros(1, 3, 32, 32)).shape)
        (1, 4, 32, 32)
    """

    def __init__(self, *, num_classes: int, config: PSPConfig | None = None) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"PSPNet needs num_classes >= 1, got {num_classes}.")
        self.config = cfg = config or PSPConfig()
        self.num_classes = num_classes
        kwargs = {"output_stride": cfg.output_stride} if cfg.output_stride != 32 else {}
        try:
            body = timm_features(cfg.backbone, cfg.pretrained, **kwargs)
        except TypeError:
            warnings.warn(f"timm model {cfg.backbone!r} cannot be dilated (no output_stride); PSPNet uses its native "
                          "stride.", stacklevel=2)
            body = timm_features(cfg.backbone, cfg.pretrained)
        self.body = freeze_batch_norm(body) if cfg.frozen_bn else body
        info = body.feature_info
        self.feature_stride = int(info.reduction()[-1])
        in_ch = int(info.channels()[-1])
        branch = cfg.ppm_channels or max(in_ch // len(cfg.bins), 1)
        self.ppm = PyramidPooling(in_ch, cfg.bins, branch)
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, cfg.head_channels, 3, padding=1, bias=False), _gn(cfg.head_channels),
            nn.ReLU(), nn.Dropout2d(cfg.dropout))
        self.classifier = nn.Conv2d(cfg.head_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        pcfg = getattr(body, "pretrained_cfg", None) or {}
        self.register_buffer("pixel_mean", torch.tensor(pcfg.get("mean", (0.485, 0.456, 0.406))), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pcfg.get("std", (0.229, 0.224, 0.225))), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> normalized with the backbone's mean and std."""
        return (images - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalized images -> ``(B, num_classes, H, W)`` logits."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}.")
        x = self.body(images)[-1]
        x = self.classifier(self.head(self.ppm(x)))
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def losses(self, images: torch.Tensor, semantic_target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"semantic": cross-entropy}`` against ``(B, H, W)`` int64 targets (255 = ignore)."""
        return {"semantic": semantic_loss(self.logits(images), semantic_target)}

    def forward(self, images: torch.Tensor, targets: Sequence[object] | torch.Tensor | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits, or in training mode with targets the loss dict.

        Args:
            images: ``(B, 3, H, W)`` normalized images.
            targets: ``(B, H, W)`` semantic labels, or ``B`` targets with a ``semantic`` attribute
                (:class:`~panoptic.data.targets.PanopticTarget`); required in training mode.
        """
        if not self.training:
            return self.logits(images)
        if targets is None:
            raise ValueError("PSPNet in training mode needs targets; call .eval() for inference.")
        if isinstance(targets, torch.Tensor):
            sem = targets
        else:
            sem = torch.stack([t.semantic for t in targets]).to(images.device)  # type: ignore[attr-defined]
        return self.losses(images, sem)
