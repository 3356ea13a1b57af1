"""Backbone: any timm model (``features_only``) + an FPN giving P2..P6, with optional global context.

The FPN is built from what timm reports in ``feature_info`` (channels and strides of each stage), so any
timm model with stride-4/8/16/32 stages plugs in without hard-coded widths. Layout (UPSNet / Mask R-CNN):

* 1x1 lateral convs reduce the stride-4..32 stages (C2..C5) to ``out_channels``;
* optional global-average-pool context (UPSNet ``fpn_with_gap``): ``GAP(C5) -> Linear`` broadcast-added to
  the C5 lateral, before the P5 3x3 conv and before the top-down path, so every level sees it;
* top-down path: nearest upsampling to the finer level's size + add;
* a 3x3 conv per level gives P2..P5; P6 = max-pool (kernel 1, stride 2) of P5.

Inputs are ``(B, 3, H, W)`` float images already normalized with :attr:`FPNBackbone.pixel_mean` /
:attr:`FPNBackbone.pixel_std` (the timm model's pretraining statistics); see :meth:`FPNBackbone.normalize`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, freeze_batch_norm_2d
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .constants import SIZE_DIVISOR

__all__ = [
    "BackboneConfig",
    "FPNBackbone",
]

FPN_STRIDES = (4, 8, 16, 32)
"""Strides of the backbone stages the FPN consumes (C2..C5)."""


@dataclass(frozen=True)
class BackboneConfig:
    """Configuration of :class:`FPNBackbone`.

    Attributes:
        name: Any timm model name that supports ``features_only`` and has stride-4, 8, 16 and 32 stages.
        pretrained: Load timm's pretrained weights (needs them in the local cache or a network).
        frozen_bn: Convert every ``BatchNorm2d`` of the timm model to ``torchvision.ops.FrozenBatchNorm2d``
            (UPSNet freezes all BN; sensible with pretrained weights and small batches, not from scratch).
        out_channels: Channels of every FPN level (UPSNet: 256).
        gap_context: Add the global-average-pool context to the P5 lateral (UPSNet COCO: on, Cityscapes: off).
    """

    name: str = "resnet50"
    pretrained: bool = False
    frozen_bn: bool = True
    out_channels: int = 256
    gap_context: bool = True

    def __post_init__(self) -> None:
        if self.out_channels <= 0:
            raise ValueError(f"BackboneConfig.out_channels must be positive, got {self.out_channels}.")


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` by ``torchvision.ops.FrozenBatchNorm2d`` (recursively).

    Running statistics, affine parameters and ``eps`` are copied; the frozen layers hold buffers only, so
    they neither train nor update statistics. timm's fused ``BatchNormAct2d`` keeps its activation
    (``timm.layers.FrozenBatchNormAct2d``).

    Args:
        module: The module to convert (modified in place where possible).

    Returns:
        The converted module (a new object if ``module`` itself is a batch norm).
    """
    if isinstance(module, BatchNormAct2d):
        return freeze_batch_norm_2d(module)
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.running_mean is not None and module.running_var is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def timm_features(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with a clear error for unsupported models."""
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "unknown model" in str(e).lower():
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for valid names.") from e
        raise


def _stage_indices(reductions: list[int], name: str) -> list[int]:
    """Index of the (last) feature level at each FPN stride; raise if the model lacks one."""
    out = []
    for s in FPN_STRIDES:
        hits = [i for i, r in enumerate(reductions) if r == s]
        if not hits:
            raise ValueError(f"timm model {name!r} has feature strides {reductions}, but the FPN needs stages at "
                             f"strides {list(FPN_STRIDES)}; pick a hierarchical CNN (e.g. resnet50, resnet18, "
                             "mobilenetv3_large_100, efficientnet_b0).")
        out.append(hits[-1])
    return out


class FPN(nn.Module):
    """Feature pyramid over four stages (strides 4..32): P2..P5 plus P6 = max-pool k1 s2 of P5.

    Args:
        in_channels: Channels of C2..C5 (from timm's ``feature_info``).
        out_channels: Channels of every output level.
        gap_context: Broadcast-add ``Linear(GAP(C5))`` to the C5 lateral.
    """

    def __init__(self, in_channels: list[int] | tuple[int, ...], out_channels: int, *, gap_context: bool = False):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPN expects 4 input stages (C2..C5), got channels {list(in_channels)}.")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.context = nn.Linear(in_channels[-1], out_channels) if gap_context else None
        for m in [*self.lateral, *self.output]:
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
        if self.context is not None:
            nn.init.normal_(self.context.weight, std=0.01)
            nn.init.zeros_(self.context.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Compute the pyramid.

        Args:
            feats: C2..C5, ``(B, C_k, H / s_k, W / s_k)``.

        Returns:
            P2..P6, each ``(B, out_channels, H / s, W / s)`` for ``s = 4, 8, 16, 32, 64``.
        """
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        if self.context is not None:
            ctx = self.context(feats[-1].mean(dim=(2, 3)))
            lat[-1] = lat[-1] + ctx[:, :, None, None]
        top = lat[-1]
        merged = [top]
        for k in range(len(lat) - 2, -1, -1):
            top = lat[k] + F.interpolate(top, size=lat[k].shape[-2:], mode="nearest")
            merged.insert(0, top)
        outs = [conv(m) for conv, m in zip(self.output, merged)]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs


class FPNBackbone(nn.Module):
    """timm feature extractor + :class:`FPN`; returns ``{"p2": ..., "p6": ...}``.

    Args:
        config: See :class:`BackboneConfig`.

    Attributes:
        out_channels: Channels of every level.
        strides: ``{"p2": 4, ..., "p6": 64}``.
        size_divisor: Input sides should be multiples of this (:data:`~panoptic.constants.SIZE_DIVISOR`) for exact
            level sizes.
        pixel_mean: ``(3,)`` normalization mean of the timm model (0..1 RGB scale).
        pixel_std: ``(3,)`` normalization std.

    Example:
        >>> bb = FPNBackbone(BackboneConfig(name="resnet18", out_channels=32, frozen_bn=False))
        >>> feats = bb(torch.zeros(1, 3, 64, 64))
        >>> {k: tuple(v.shape) for k, v in feats.items()}["p6"]
        (1, 32, 1, 1)
    """

    level_names = ("p2", "p3", "p4", "p5", "p6")

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        body = timm_features(config.name, config.pretrained)
        info = body.feature_info
        self._indices = _stage_indices(list(info.reduction()), config.name)
        in_channels = [info.channels()[i] for i in self._indices]
        self.body = freeze_batch_norm(body) if config.frozen_bn else body
        self.in_channels = tuple(in_channels)
        self.fpn = FPN(in_channels, config.out_channels, gap_context=config.gap_context)
        self.out_channels = config.out_channels
        self.strides = dict(zip(self.level_names, (4, 8, 16, 32, 64)))
        self.size_divisor = SIZE_DIVISOR
        cfg = getattr(body, "pretrained_cfg", None) or {}
        self.register_buffer("pixel_mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> normalized with the backbone's mean and std."""
        return (images - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Compute P2..P6.

        Args:
            images: ``(B, 3, H, W)`` normalized float images.

        Returns:
            Ordered ``{"p2": (B, C, H/4, W/4), ..., "p6": (B, C, H/64, W/64)}`` (sizes rounded up).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}.")
        feats = self.body(images)
        pyramid = self.fpn([feats[i] for i in self._indices])
        return OrderedDict(zip(self.level_names, pyramid))
