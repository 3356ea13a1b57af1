"""Plain-tensor data types: :class:`Instances` (fusion input) and :class:`PanopticResult` (fusion output).

Neither type depends on any model class. Conversions to the label encodings found in the wild live in
:mod:`panoptic.formats` (``to_coco(result, table)``, ``to_label_divisor(result)``, ...), which imports
this module; this module imports no converter, so the types sit at the bottom of the import graph.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from .categories import CategoryTable

__all__ = ["Instances", "PanopticResult"]

MaskSpace = Literal["roi", "image"]
#: What the values of ``Instances.mask_logits`` are: logits, probabilities in ``[0, 1]``, or 0/1 (bool) masks.
MaskKind = Literal["logits", "probabilities", "binary"]
_MASK_KINDS = ("logits", "probabilities", "binary")

#: Bound of the logits :func:`probabilities_to_logits` makes (``logit(0)`` and ``logit(1)`` are infinite).
PROBABILITY_LOGIT_LIMIT = 20.0


def mask_foreground(masks: torch.Tensor, kind: MaskKind, threshold: float = 0.5, strict: bool = False,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Foreground of masks of any kind: probability ``p >= threshold`` (``>`` if ``strict``).

    Each kind is compared in its own units, so the decision is the same for all: logits against
    ``log(t / (1 - t))`` (exactly 0.0 for the default 0.5: ``p >= 0.5`` iff ``logit >= 0``), probabilities
    against ``t`` (in the mask's dtype, as detectron2, mmdet and torchvision compare), binary masks as
    probabilities of exactly 0 or 1.

    Args:
        masks: Any shape; float for logits and probabilities, bool or 0/1 numbers for binary.
        kind: ``"logits"``, ``"probabilities"`` or ``"binary"``.
        threshold: Probability threshold in ``(0, 1)``.
        strict: ``>`` instead of ``>=``.
        out: Optional output tensor (e.g. an int32 work buffer, written 1/0).

    Returns:
        Bool (or ``out``'s dtype) tensor of ``masks``' shape.
    """
    if kind == "logits":
        t = math.log(threshold) - math.log1p(-threshold)
    elif kind in ("probabilities", "binary"):
        t = threshold
        if masks.dtype == torch.bool:
            masks = masks.to(torch.uint8)  # True = 1 > t, False = 0 < t for every t in (0, 1)
    else:
        raise ValueError(f"mask kind must be one of {_MASK_KINDS}, got {kind!r}.")
    return torch.gt(masks, t, out=out) if strict else torch.ge(masks, t, out=out)


def probabilities_to_logits(masks: torch.Tensor) -> torch.Tensor:
    """``logit(p)`` of float probabilities, for fusions that add mask logits to other logits.

    Computed in float64 and rounded to ``masks``' dtype: the sign is exact (``p > 0.5`` iff ``logit > 0``,
    ``p == 0.5`` iff ``logit == 0``), and ``p`` of 0 and 1 become ``-+PROBABILITY_LOGIT_LIMIT``.

    Args:
        masks: Float probabilities in ``[0, 1]``, any shape.
    """
    lim = PROBABILITY_LOGIT_LIMIT
    return torch.logit(masks.double()).clamp_(-lim, lim).to(masks.dtype)


def boxes_from_masks(masks: torch.Tensor, kind: MaskKind = "logits") -> torch.Tensor:
    """``(N, 4)`` float xyxy boxes around the foreground (at the default 0.5) of full-image masks.

    ``x2``/``y2`` are the last foreground column/row (inclusive pixel indices, the convention of
    :func:`~panoptic.fusion.paste.box_regions`); an empty mask gets ``[0, 0, 0, 0]``.

    Args:
        masks: ``(N, H, W)`` of kind ``kind``.
        kind: See :class:`Instances`.
    """
    if masks.ndim != 3:
        raise ValueError(f"full-image masks must be (N, H, W), got {tuple(masks.shape)}.")
    h, w = int(masks.shape[1]), int(masks.shape[2])
    fg = mask_foreground(masks, kind)
    rows, cols = fg.any(2), fg.any(1)
    nonempty = rows.any(1)
    y0 = rows.to(torch.uint8).argmax(1)
    y1 = h - 1 - rows.flip(1).to(torch.uint8).argmax(1)
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = w - 1 - cols.flip(1).to(torch.uint8).argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(nonempty[:, None], boxes, torch.zeros_like(boxes))


@dataclass
class Instances:
    """Detections of one image. ``N`` may be 0.

    Attributes:
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2`` in pixels of the fusion's output frame.
        scores: ``(N,)`` float detection confidences.
        labels: ``(N,)`` int64 *thing index* ``0 .. num_things - 1`` (contiguous id minus ``num_stuff``).
        mask_logits: The masks, of the kind ``mask_kind`` says (logits by default). ``(N, M, M)`` ROI-aligned
            masks when ``mask_space="roi"``; ``(N, h, w)`` full-image masks when ``mask_space="image"``
            (resized bilinearly to the output size if ``(h, w)`` differs from it).
        mask_space: ``"roi"`` or ``"image"``, see ``mask_logits``.
        mask_kind: ``"logits"`` (the default; foreground iff ``logit >= 0`` at the usual 0.5 threshold),
            ``"probabilities"`` (values in ``[0, 1]``, e.g. a sigmoid output; foreground iff ``p >= 0.5``) or
            ``"binary"`` (bool, or 0/1 floats). The fusions threshold each kind so that the decision is the
            same: probability ``p >= t`` iff logit ``>= log(t / (1 - t))``; a binary mask is a probability of
            exactly 0 or 1. A fusion that needs logit *values* (``UPSNetFusion``) gets probabilities as
            ``logit(p)`` (computed in float64, sign-exact at 0.5, clamped to ``+-PROBABILITY_LOGIT_LIMIT``) and
            rejects binary masks. Prefer the constructors :meth:`from_probabilities` and :meth:`from_binary`.
            The fusions' ``forward`` (and :class:`~panoptic.evaluation.detection.DetectionAP`) read every kind;
            the lower-level functions that take logits directly (``prune_instances``,
            ``UPSNetFusion.panoptic_logits`` in training) expect ``"logits"``.

    Example:
        >>> inst = Instances(boxes=torch.tensor([[0.0, 0.0, 3.0, 3.0]]), scores=torch.tensor([0.9]),
        ...                  labels=torch.tensor([0]), mask_logits=torch.ones(1, 28, 28))
        >>> len(inst)
        1
        >>> Instances.from_binary(torch.tensor([[[0, 1, 1], [0, 1, 0]]], dtype=torch.bool), torch.tensor([0.8]),
        ...                       torch.tensor([0])).boxes  # boxes derived from the full-image masks
        tensor([[1., 0., 2., 1.]])
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask_logits: torch.Tensor
    mask_space: MaskSpace = "roi"
    mask_kind: MaskKind = "logits"

    @staticmethod
    def from_probabilities(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                           boxes: torch.Tensor | None = None, mask_space: MaskSpace = "image") -> Instances:
        """Instances whose masks are probabilities in ``[0, 1]`` (e.g. torchvision's Mask R-CNN output).

        Args:
            masks: ``(N, H, W)`` full-image (``mask_space="image"``, the default) or ``(N, M, M)`` ROI masks.
            scores: ``(N,)`` float.
            labels: ``(N,)`` int64 thing indices.
            boxes: ``(N, 4)`` xyxy; ``None`` for full-image masks derives them (:func:`boxes_from_masks`).
            mask_space: ``"image"`` or ``"roi"`` (``"roi"`` needs ``boxes``).
        """
        return Instances._with_masks(masks, scores, labels, boxes, mask_space, "probabilities")

    @staticmethod
    def from_binary(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    boxes: torch.Tensor | None = None, mask_space: MaskSpace = "image") -> Instances:
        """Instances whose masks are binary (bool or 0/1), e.g. detectron2's post-processed ``pred_masks``.

        Args: as :meth:`from_probabilities`.
        """
        return Instances._with_masks(masks, scores, labels, boxes, mask_space, "binary")

    @staticmethod
    def _with_masks(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None,
                    mask_space: MaskSpace, kind: MaskKind) -> Instances:
        if boxes is None:
            if mask_space != "image":
                raise ValueError("boxes can be omitted only for full-image masks (mask_space='image'); ROI masks "
                                 "need their boxes.")
            boxes = boxes_from_masks(masks, kind)
        return Instances(boxes, scores, labels, masks, mask_space, kind)

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
                         self.mask_space, self.mask_kind)

    def to(self, device: torch.device | str) -> Instances:
        """Move every tensor to ``device``."""
        return Instances(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                         self.mask_logits.to(device), self.mask_space, self.mask_kind)

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
                             f"got {tuple(m.shape)}; torchvision-style (N, 1, H, W) masks: pass masks[:, 0].")
        if self.mask_space not in ("roi", "image"):
            raise ValueError(f"Instances.mask_space must be 'roi' or 'image', got {self.mask_space!r}.")
        if self.mask_kind not in _MASK_KINDS:
            raise ValueError(f"Instances.mask_kind must be one of {_MASK_KINDS}, got {self.mask_kind!r}.")
        if self.mask_kind != "binary" and not m.is_floating_point():
            raise ValueError(f"Instances.mask_logits must be float {self.mask_kind}, got {m.dtype}; for binary "
                             "masks pass mask_kind='binary' (Instances.from_binary).")
        if n == 0:
            return
        if m.shape[1] == 0 or m.shape[2] == 0:
            raise ValueError(f"Instances.mask_logits has an empty mask size {tuple(m.shape[1:])}.")
        if lab.min() < 0 or lab.max() >= num_things:
            raise ValueError(f"Instances.labels must be thing indices in 0..{num_things - 1} (contiguous id minus "
                             f"num_stuff); got values in [{int(lab.min())}, {int(lab.max())}].")
        for name, t in (("boxes", b), ("scores", s)):
            if not torch.isfinite(t).all():
                raise ValueError(f"Instances.{name} contains NaN or inf; clamp or drop those instances first.")
        self._validate_mask_values()
        self._validate_mask_space(image_size)
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            bad = torch.nonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))[:, 0].tolist()
            raise ValueError(f"degenerate boxes (x2 < x1 or y2 < y1) at indices {bad[:10]}; boxes must be xyxy. "
                             "Convert xywh with torchvision.ops.box_convert or drop them.")

    def _validate_mask_values(self) -> None:
        """The values fit ``mask_kind``; 0/1-only "logits" (binary masks passed as logits) are refused."""
        m = self.mask_logits.detach()
        if self.mask_kind == "binary":
            if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("Instances.mask_logits with mask_kind='binary' must hold only 0 and 1 (or be "
                                 "bool); for probabilities pass mask_kind='probabilities' "
                                 "(Instances.from_probabilities).")
            return
        lo, hi = (float(v) for v in torch.aminmax(m))  # NaN propagates; an inf is the min or the max
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("Instances.mask_logits contains NaN or inf; clamp or drop those instances first.")
        if self.mask_kind == "probabilities":
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"Instances.mask_logits with mask_kind='probabilities' must lie in [0, 1], got "
                                 f"values in [{lo:g}, {hi:g}]; for logits leave mask_kind='logits'.")
            return
        # Logits that are exactly 0 and 1 are binary masks: as logits, 0 >= 0 would paint the whole box.
        if lo == 0.0 and hi == 1.0 and bool(((m == 0) | (m == 1)).all()):
            raise ValueError("Instances.mask_logits holds only 0 and 1: these are binary masks, not logits (as "
                             "logits every 0 would count as foreground). Pass mask_kind='binary' "
                             "(Instances.from_binary), or mask_kind='probabilities' for probabilities.")

    def _validate_mask_space(self, image_size: tuple[int, int] | None) -> None:
        """ROI masks are square; masks of the image's size passed as ROI masks get a warning."""
        if self.mask_space != "roi":
            return
        h, w = int(self.mask_logits.shape[1]), int(self.mask_logits.shape[2])
        if h != w:
            raise ValueError(f"Instances.mask_logits are {h}x{w}, but ROI masks (mask_space='roi') are square "
                             "(N, M, M); for full-image masks pass mask_space='image'.")
        if image_size is not None and (h, w) == tuple(image_size) and h > 28:
            warnings.warn(f"Instances has ROI masks (mask_space='roi') as large as the image ({h}x{w}): if these "
                          "are full-image masks pass mask_space='image', or they are resized into each box.",
                          UserWarning, stacklevel=4)


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
