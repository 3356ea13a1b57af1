"""``CentreOffsets``: one image's outputs of a centre-offset model (Panoptic-DeepLab) for fusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["CentreOffsets"]

SemanticKind = Literal["logits", "labels"]


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare
class CentreOffsets:
    """Semantic scores, centre heatmap and centre offsets of one image, all at the output size ``(H, W)``.

    Build it from logits with the constructor, or from argmax'd labels (what detectron2's Panoptic-DeepLab
    passes to its post-processing) with :meth:`from_labels`; nothing is guessed from the shape.

    Attributes:
        semantic: ``(C, H, W)`` float logits (``semantic_kind="logits"``), or ``(1, H, W)`` integer contiguous
            category ids (``semantic_kind="labels"``, from :meth:`from_labels`).
        centre_heatmap: ``(1, H, W)`` float centre heatmap (any scale; thresholds compare raw values).
        offsets: ``(2, H, W)`` float offsets in pixels from each pixel to its instance centre, channel 0 = dy,
            channel 1 = dx.
        semantic_kind: ``"logits"`` or ``"labels"``.

    Example:
        >>> import torch
        >>> x = CentreOffsets(torch.zeros(3, 4, 5), torch.zeros(1, 4, 5), torch.zeros(2, 4, 5))
        >>> x.image_size
        (4, 5)
    """

    semantic: torch.Tensor
    centre_heatmap: torch.Tensor
    offsets: torch.Tensor
    semantic_kind: SemanticKind = "logits"

    @staticmethod
    def from_labels(labels: torch.Tensor, centre_heatmap: torch.Tensor, offsets: torch.Tensor) -> CentreOffsets:
        """Inputs with the semantic argmax already taken (detectron2's ``sem_seg`` of shape ``(1, H, W)``).

        Args:
            labels: ``(1, H, W)`` or ``(H, W)`` integer contiguous category ids (stuff first, then things, as in
                the :class:`~panoptic.CategoryTable`).
            centre_heatmap: ``(1, H, W)``.
            offsets: ``(2, H, W)``.
        """
        if isinstance(labels, torch.Tensor) and labels.ndim == 2:
            labels = labels[None]
        return CentreOffsets(labels, centre_heatmap, offsets, semantic_kind="labels")

    @staticmethod
    def from_batch(semantic_logits: torch.Tensor, centre_heatmap: torch.Tensor,
                   offsets: torch.Tensor) -> list[CentreOffsets]:
        """One :class:`CentreOffsets` per image of batched model outputs (views, no copy).

        Args:
            semantic_logits: ``(B, C, H, W)`` float logits.
            centre_heatmap: ``(B, 1, H, W)``.
            offsets: ``(B, 2, H, W)``, dy then dx.

        Raises:
            ValueError: If the three are not 4-D with the same batch size.
        """
        tensors = (semantic_logits, centre_heatmap, offsets)
        if any(not isinstance(t, torch.Tensor) or t.ndim != 4 for t in tensors) or len(
                {int(t.shape[0]) for t in tensors}) != 1:
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in tensors]
            raise ValueError(f"from_batch needs (B, C, H, W), (B, 1, H, W) and (B, 2, H, W) tensors with one batch "
                             f"size, got {shapes}; for one image use the CentreOffsets constructor.")
        return [CentreOffsets(s, c, o) for s, c, o in zip(*tensors, strict=True)]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.centre_heatmap.shape[-2]), int(self.centre_heatmap.shape[-1])

    def to(self, device: torch.device | str) -> CentreOffsets:
        """Move every tensor to ``device``."""
        return CentreOffsets(self.semantic.to(device), self.centre_heatmap.to(device), self.offsets.to(device),
                             self.semantic_kind)

    def validate(self, num_classes: int, check_semantic_finite: bool = True) -> None:
        """Check shapes, dtypes, devices and values against a table of ``num_classes`` categories.

        ``check_semantic_finite=False`` leaves the logits' NaN/inf check to a caller that reads them anyway.

        Raises:
            ValueError: Naming the tensor and the fix.
        """
        s, c, o = self.semantic, self.centre_heatmap, self.offsets
        for name, t in (("semantic", s), ("centre_heatmap", c), ("offsets", o)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"CentreOffsets.{name} must be a torch.Tensor, got {type(t).__name__}.")
            if t.is_meta:
                raise ValueError(f"CentreOffsets.{name} is on the 'meta' device (shapes, no values); fuse real "
                                 "tensors.")
        if self.semantic_kind not in ("logits", "labels"):
            raise ValueError(f"CentreOffsets.semantic_kind must be 'logits' or 'labels', got {self.semantic_kind!r}.")
        if c.ndim != 3 or c.shape[0] != 1:
            raise ValueError(f"CentreOffsets.centre_heatmap must be (1, H, W), got {tuple(c.shape)}; add the channel "
                             "dim with heatmap[None].")
        h, w = self.image_size
        if h == 0 or w == 0:
            raise ValueError(f"CentreOffsets has an empty image size {(h, w)}.")
        if o.ndim != 3 or tuple(o.shape) != (2, h, w):
            raise ValueError(f"CentreOffsets.offsets must be (2, H, W) = (2, {h}, {w}) (dy then dx), got "
                             f"{tuple(o.shape)}; channels-last offsets need offsets.permute(2, 0, 1).")
        if not (c.is_floating_point() and o.is_floating_point()):
            raise ValueError(f"CentreOffsets.centre_heatmap and offsets must be float, got {c.dtype} and {o.dtype}.")
        if s.device != c.device or o.device != c.device:
            raise ValueError(f"CentreOffsets tensors are on different devices ({s.device}, {c.device}, {o.device}); "
                             "move them with .to(device).")
        self._validate_semantic(num_classes)
        from .fusion.base import _all_finite  # here: panoptic.fusion imports this module

        logits = self.semantic_kind == "logits" and check_semantic_finite
        for name, t in [("centre_heatmap", c), ("offsets", o)] + ([("semantic", s)] if logits else []):
            if not _all_finite(t):
                raise ValueError(f"CentreOffsets.{name} contains NaN or inf; check the model output (e.g. "
                                 "torch.nan_to_num) before fusion.")

    def _validate_semantic(self, num_classes: int) -> None:
        """Check ``semantic``'s shape, dtype and (for labels) range for its ``semantic_kind``."""
        s, (h, w) = self.semantic, self.image_size
        if self.semantic_kind == "logits":
            if s.ndim != 3 or tuple(s.shape[1:]) != (h, w):
                raise ValueError(f"CentreOffsets.semantic must be (C, H, W) logits at the heatmap's size {(h, w)}, "
                                 f"got {tuple(s.shape)}.")
            if not s.is_floating_point():
                raise ValueError(f"CentreOffsets.semantic logits must be float, got {s.dtype}; for argmax'd labels "
                                 "use CentreOffsets.from_labels(labels, heatmap, offsets).")
            if s.shape[0] != num_classes:
                hint = (" These look like argmax'd labels (detectron2's sem_seg): use CentreOffsets.from_labels."
                        if s.shape[0] == 1 else " Order the channels stuff first, then things, one per category.")
                raise ValueError(f"CentreOffsets.semantic has {s.shape[0]} channels but the category table has "
                                 f"{num_classes}.{hint}")
        else:
            if s.ndim != 3 or tuple(s.shape) != (1, h, w):
                raise ValueError(f"CentreOffsets.semantic labels must be (1, H, W) = (1, {h}, {w}), got "
                                 f"{tuple(s.shape)}; for (C, H, W) logits use the CentreOffsets constructor.")
            if s.is_floating_point() or s.dtype == torch.bool:
                raise ValueError(f"CentreOffsets.semantic labels must be integer category ids, got {s.dtype}; for "
                                 "logits use the CentreOffsets constructor.")
            lo, hi = (int(v) for v in torch.aminmax(s))
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"CentreOffsets.semantic labels must be contiguous ids in 0..{num_classes - 1}, got "
                                 f"values in [{lo}, {hi}]; map dataset ids with CategoryTable.to_contiguous.")


def checked_centre_inputs(inputs: Sequence[CentreOffsets]) -> Sequence[CentreOffsets]:
    """``inputs`` if it is a list of :class:`CentreOffsets` (one per image; shapes are checked by ``validate``).

    Raises:
        ValueError: For a single :class:`CentreOffsets` or an element of another type (the message names the fix).
    """
    if isinstance(inputs, CentreOffsets) or not isinstance(inputs, Sequence):
        raise ValueError("CentreOffsetFusion takes a list of CentreOffsets, one per image; wrap a single image "
                         "as fusion([x]).")
    for i, x in enumerate(inputs):
        if not isinstance(x, CentreOffsets):
            raise ValueError(f"inputs[{i}] must be a panoptic.CentreOffsets, got {type(x).__name__}.")
    return inputs
