"""Plain-tensor data types: :class:`Instances` (fusion input) and :class:`PanopticResult` (fusion output).

Neither type depends on any model class. Conversions to the label encodings found in the wild live in
:mod:`panoptic.formats`; :class:`PanopticResult` exposes them as methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from .categories import CategoryTable

__all__ = ["Instances", "PanopticResult"]

MaskSpace = Literal["roi", "image"]


@dataclass
class Instances:
    """Detections of one image. ``N`` may be 0.

    Attributes:
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2`` in pixels of the fusion's output frame.
        scores: ``(N,)`` float detection confidences.
        labels: ``(N,)`` int64 *thing index* ``0 .. num_things - 1`` (contiguous id minus ``num_stuff``).
        mask_logits: ``(N, M, M)`` ROI-aligned mask **logits** (not probabilities) when
            ``mask_space="roi"``; ``(N, h, w)`` full-image mask logits when ``mask_space="image"``
            (resized bilinearly to the output size if ``(h, w)`` differs from it).
        mask_space: ``"roi"`` or ``"image"``, see ``mask_logits``.

    Example:
        >>> inst = Instances(boxes=torch.tensor([[0.0, 0.0, 3.0, 3.0]]), scores=torch.tensor([0.9]),
        ...                  labels=torch.tensor([0]), mask_logits=torch.ones(1, 28, 28))
        >>> len(inst)
        1
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask_logits: torch.Tensor
    mask_space: MaskSpace = "roi"

    @staticmethod
    def empty(mask_size: int = 28, device: torch.device | str | None = None) -> Instances:
        """Zero instances, with the right shapes and dtypes."""
        return Instances(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                         torch.zeros(0, dtype=torch.int64, device=device),
                         torch.zeros(0, mask_size, mask_size, device=device))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: torch.Tensor | slice | list[int]) -> Instances:
        """Subset by a bool mask, index tensor, list or slice."""
        return Instances(self.boxes[index], self.scores[index], self.labels[index], self.mask_logits[index],
                         self.mask_space)

    def to(self, device: torch.device | str) -> Instances:
        """Move every tensor to ``device``."""
        return Instances(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                         self.mask_logits.to(device), self.mask_space)

    def validate(self, num_things: int, image_size: tuple[int, int] | None = None) -> None:
        """Check shapes, dtypes, ranges and finiteness; raise a ``ValueError`` that names the fix.

        Args:
            num_things: Number of thing categories; ``labels`` must lie in ``0 .. num_things - 1``.
            image_size: ``(H, W)`` of the output frame. Boxes may extend past it: fusions clip them, and an
                instance whose box lies entirely outside gets no pixel.
        """
        b, s, lab, m = self.boxes, self.scores, self.labels, self.mask_logits
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"Instances.boxes must be (N, 4) xyxy, got shape {tuple(b.shape)}.")
        n = b.shape[0]
        if not b.is_floating_point():
            raise ValueError(f"Instances.boxes must be a float tensor, got {b.dtype}; use boxes.float().")
        if s.shape != (n,) or not s.is_floating_point():
            raise ValueError(f"Instances.scores must be float of shape ({n},), got {tuple(s.shape)} {s.dtype}.")
        if lab.shape != (n,) or lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(f"Instances.labels must be int64 of shape ({n},), got {tuple(lab.shape)} {lab.dtype}.")
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"Instances.mask_logits must be (N, M, M) or (N, H, W) with N={n}, "
                             f"got {tuple(m.shape)}.")
        if not m.is_floating_point():
            raise ValueError(f"Instances.mask_logits must be float logits, got {m.dtype}; pass logits, "
                             "e.g. torch.logit(probs) for probabilities.")
        if self.mask_space not in ("roi", "image"):
            raise ValueError(f"Instances.mask_space must be 'roi' or 'image', got {self.mask_space!r}.")
        if n == 0:
            return
        if m.shape[1] == 0 or m.shape[2] == 0:
            raise ValueError(f"Instances.mask_logits has an empty mask size {tuple(m.shape[1:])}.")
        if lab.min() < 0 or lab.max() >= num_things:
            raise ValueError(f"Instances.labels must be thing indices in 0..{num_things - 1} (contiguous id minus "
                             f"num_stuff); got values in [{int(lab.min())}, {int(lab.max())}].")
        for name, t in (("boxes", b), ("scores", s), ("mask_logits", m)):
            if not torch.isfinite(t).all():
                raise ValueError(f"Instances.{name} contains NaN or inf; clamp or drop those instances first.")
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            bad = torch.nonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))[:, 0].tolist()
            raise ValueError(f"degenerate boxes (x2 < x1 or y2 < y1) at indices {bad[:10]}; boxes must be xyxy. "
                             "Convert xywh with torchvision.ops.box_convert or drop them.")


@dataclass
class PanopticResult:
    """Panoptic segmentation of one image, with a complete segment table.

    Segment ``k`` (``1 <= k <= S``) is row ``k - 1`` of the table. Guarantees for results produced by
    the fusions: ids are contiguous, every segment has a positive area equal to its pixel count,
    segments never overlap (it is a map), and there is at most one segment per stuff category.

    Attributes:
        segment_map: ``(H, W)`` int32; 0 = void, ``1..S`` = segment ids.
        unknown_mask: ``(H, W)`` bool; pixels the strategy *predicted* unknown (always void in
            ``segment_map``). All ``False`` for strategies without an unknown class.
        category: ``(S,)`` int64 contiguous category ids (semantic channel index).
        isthing: ``(S,)`` bool.
        score: ``(S,)`` float32; detection score for things, mean class probability for stuff,
            NaN where unknown (e.g. imported from a format that has no scores).
        area: ``(S,)`` int64 pixel counts.
        source: ``(S,)`` int64 index of the instance in the fusion's input ``Instances``; -1 for
            segments built from the semantic logits.
        iscrowd: ``(S,)`` bool; only ground truth has crowd segments.
    """

    segment_map: torch.Tensor
    unknown_mask: torch.Tensor
    category: torch.Tensor
    isthing: torch.Tensor
    score: torch.Tensor
    area: torch.Tensor
    source: torch.Tensor
    iscrowd: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if self.iscrowd.numel() != self.category.numel():
            self.iscrowd = torch.zeros(self.category.shape, dtype=torch.bool, device=self.category.device)

    # ------------------------------------------------------------------------------------ basics
    @property
    def num_segments(self) -> int:
        """Number of segments ``S``."""
        return int(self.category.numel())

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.segment_map.shape[0]), int(self.segment_map.shape[1])

    def to(self, device: torch.device | str) -> PanopticResult:
        """Move every tensor to ``device``."""
        return PanopticResult(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def semantic_map(self, void: int = -1) -> torch.Tensor:
        """``(H, W)`` int64 contiguous category per pixel, ``void`` where void."""
        lut = torch.cat([torch.tensor([void], device=self.category.device), self.category])
        return lut[self.segment_map.long()]

    def equal(self, other: PanopticResult, segmentation_only: bool = False) -> bool:
        """Exact equality of maps and tables (NaN scores compare equal).

        Args:
            other: The result to compare with.
            segmentation_only: Ignore ``score`` and ``source`` (what formats without them cannot keep).
        """
        skip = {"score", "source"} if segmentation_only else {"score"}
        names = [f.name for f in fields(self) if f.name not in skip]
        if not all(torch.equal(getattr(self, n).cpu(), getattr(other, n).cpu()) for n in names):
            return False
        return segmentation_only or torch.equal(torch.nan_to_num(self.score.cpu(), nan=-7.0),
                                                torch.nan_to_num(other.score.cpu(), nan=-7.0))

    def validate(self, table: CategoryTable | None = None, one_stuff_segment: bool = True) -> None:
        """Check every invariant of the class docstring; raise ``ValueError`` naming the broken one."""
        sm = self.segment_map
        s = self.num_segments
        if sm.ndim != 2 or sm.dtype != torch.int32:
            raise ValueError(f"segment_map must be (H, W) int32, got {tuple(sm.shape)} {sm.dtype}.")
        if self.unknown_mask.shape != sm.shape or self.unknown_mask.dtype != torch.bool:
            raise ValueError("unknown_mask must be a bool tensor of segment_map's shape.")
        for name in ("isthing", "score", "area", "source", "iscrowd"):
            if getattr(self, name).shape != (s,):
                raise ValueError(f"segment table column {name!r} must have shape ({s},).")
        if sm.numel() and (sm.min() < 0 or sm.max() > s):
            raise ValueError(f"segment ids must be in 0..{s}, got [{int(sm.min())}, {int(sm.max())}].")
        counts = torch.bincount(sm.reshape(-1).long(), minlength=s + 1)
        if (counts[1:] == 0).any():
            raise ValueError("a segment has zero pixels; segment ids must be contiguous with positive areas.")
        if not torch.equal(counts[1:].cpu(), self.area.cpu()):
            raise ValueError("segment areas differ from their pixel counts.")
        if (self.unknown_mask & (sm != 0)).any():
            raise ValueError("unknown_mask marks pixels that belong to a segment; unknown pixels must be void.")
        if one_stuff_segment:
            stuff = self.category[~self.isthing]
            if stuff.unique().numel() != stuff.numel():
                raise ValueError("more than one segment for a stuff category.")
        if table is not None:
            if s and (self.category.min() < 0 or self.category.max() >= table.num_classes):
                raise ValueError(f"segment categories must be contiguous ids in 0..{table.num_classes - 1}.")
            if not torch.equal(table.isthing_tensor(self.category.device)[self.category], self.isthing):
                raise ValueError("segment 'isthing' flags disagree with the category table.")

    # --------------------------------------------------------------------------- format bridges
    def to_coco(self, table: CategoryTable) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """COCO-panoptic export: ``(H, W, 3)`` uint8 RGB PNG array and ``segments_info``.

        See :func:`panoptic.formats.to_coco`.
        """
        from .formats import to_coco

        return to_coco(self, table)

    @staticmethod
    def from_coco(png: np.ndarray, segments_info: list[dict[str, Any]], table: CategoryTable) -> PanopticResult:
        """COCO-panoptic import; see :func:`panoptic.formats.from_coco`."""
        from .formats import from_coco

        return from_coco(png, segments_info, table)

    def to_label_divisor(self, label_divisor: int = 1000, void: int = -1, unknown: int | None = None,
                         table: CategoryTable | None = None) -> torch.Tensor:
        """``category * label_divisor + instance`` map; see :func:`panoptic.formats.to_label_divisor`."""
        from .formats import to_label_divisor

        return to_label_divisor(self, label_divisor, void, unknown, table)

    def to_pairs(self, void: int = -1, unknown: int | None = None,
                 table: CategoryTable | None = None) -> torch.Tensor:
        """``(H, W, 2)`` (category, instance) pairs; see :func:`panoptic.formats.to_pairs`."""
        from .formats import to_pairs

        return to_pairs(self, void, unknown, table)
