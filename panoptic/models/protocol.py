"""The model interface that the training engine, inference and ``panoptic compare`` rely on.

Every model answers the same methods (as every timm model does), so ``panoptic.engine`` and
``panoptic.compare`` never ask what class a model is. :class:`TrainableModel` is what the trainer needs
(:class:`~panoptic.models.MaskRCNN` is one); :class:`PanopticModel` adds inference with a pluggable fusion
(:class:`~panoptic.models.UPSNet` and :class:`~panoptic.models.MRCNNPSP` are ones).

Example:
    >>> from panoptic.data import synthetic_categories
    >>> from panoptic.models import build_model
    >>> model = build_model("upsnet_cpu_small", synthetic_categories(), fpn_channels=8)
    >>> isinstance(model, PanopticModel), sorted(model.train_parts())
    (True, ['model'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..categories import CategoryTable
from ..fusion import PanopticFusion
from .types import NetworkOutput, PanopticPrediction, TrainTarget

__all__ = ["PanopticModel", "TrainableModel"]


@runtime_checkable
class TrainableModel(Protocol):
    """A model the trainer can train: ``model.train(); model(images, targets)`` returns weighted losses."""

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> the normalized input the model expects."""
        ...

    def losses(self, images: torch.Tensor, targets: Sequence[TrainTarget]) -> dict[str, torch.Tensor]:
        """Weighted scalar losses of normalized ``(B, 3, H, W)`` images (training mode)."""
        ...

    def train_parts(self) -> dict[str, nn.Module]:
        """Independently optimized parts, each with its own optimizer; every part's training-mode
        ``forward(images, targets)`` returns a dict of losses (``{"model": self}`` for a single network)."""
        ...


@runtime_checkable
class PanopticModel(TrainableModel, Protocol):
    """A trainable model that also predicts panoptic segmentations with a pluggable fusion.

    Attributes:
        table: The category table (semantic channels: stuff first, then things).
        fusion: The fusion used by :meth:`predict`.
        train_panoptic_loss: Whether the model is trained with UPSNet's panoptic-head loss (its logits are
            then trained for :class:`~panoptic.fusion.UPSNetFusion`).
        description: How messages name the model, e.g. ``"an MR-CNN-PSP model"``.
    """

    table: CategoryTable
    fusion: PanopticFusion
    train_panoptic_loss: bool
    description: str

    def network(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                keep_features: bool = False) -> NetworkOutput:
        """The networks' outputs without fusion; logits at the padded input resolution."""
        ...

    def predict(self, images: torch.Tensor,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> list[PanopticPrediction]:
        """``network`` then ``fusion`` on each image's valid region."""
        ...

    def semantic_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` semantic logits of ``(B, 3, H, W)`` normalized images, without the detector."""
        ...

    def mask_logits(self, features: dict[str, torch.Tensor], boxes: Sequence[torch.Tensor],
                    labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(N, M, M)`` mask logits per image of given boxes ``(N, 4)`` and thing labels ``(N,)``, from the
        features that ``network(..., keep_features=True)`` returned."""
        ...

    def classify_boxes(self, features: dict[str, torch.Tensor],
                       boxes: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(scores (N,), labels (N,))`` per image of the box classifier on given boxes ``(N, 4)``."""
        ...
