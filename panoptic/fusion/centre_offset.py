"""Panoptic-DeepLab's centre-offset fusion: centre NMS, offset grouping, majority-vote class, stuff area.

The rule of detectron2's ``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py`` (``flavor="detectron2"``)
and of deeplab2's ``model/post_processor/panoptic_deeplab.py`` (``flavor="deeplab2"``), vectorised: one pass groups
every thing pixel with its nearest centre (chunked, :func:`panoptic._ops.centre.nearest_centre`) and one
``bincount`` takes every centre's majority vote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from .._ops.argmax import first_argmax_keys
from .._ops.centre import heatmap_peaks, nearest_centre
from .._ops.threads import call_pixels, fusion_threads
from ..categories import CategoryTable
from ..centre_offsets import CentreOffsets, checked_centre_inputs
from ..segments import assemble_result
from ..structures import PanopticResult
from .base import FiniteCheck, PanopticFusion, fill_stuff_scores_sampled, score_stride
from .centre_graph import CentreOffsetGraph

__all__ = ["CentreOffsetFusion"]

CentreFlavor = Literal["detectron2", "deeplab2"]
_FLAVORS = ("detectron2", "deeplab2")
_DTYPE_RANGE = {torch.uint16: (0, 65535), torch.int32: (-(2 ** 31), 2 ** 31 - 1),
                torch.int64: (-(2 ** 63), 2 ** 63 - 1)}


class CentreOffsetFusion(PanopticFusion):
    """Panoptic-DeepLab post-processing: a list of :class:`~panoptic.CentreOffsets` -> a list of results.

    Per image: the semantic argmax (first maximum on ties) gives each pixel a category; centres are the
    peaks of the heatmap; each thing pixel joins the centre nearest to ``(y + dy, x + dx)``; each centre's
    segment takes the majority class of its pixels; stuff categories are kept by total area.

    Results: one segment per centre that owns a thing pixel (``source`` = the centre's index in row-major
    order, ``score`` = the heatmap at the centre) and one per kept stuff category (``source = -1``, ``score``
    = mean softmax probability of its class, NaN for :meth:`CentreOffsets.from_labels` inputs).

    Args:
        table: Category table (stuff channels first, then things).
        threshold: A centre needs ``heatmap > threshold`` (strict) and ``heatmap > 0``.
        nms_kernel: Odd max-pool window: a centre equals the maximum of the ``nms_kernel x nms_kernel`` window
            around it (every pixel of a flat maximum is a centre).
        top_k: Keep at most this many centres: when there are at least ``top_k`` peaks (``flavor="detectron2"``;
            more than ``top_k`` for ``"deeplab2"``), keep those with a value ``>`` the ``top_k``-th largest
            (peaks tied at that value are all dropped). ``None`` keeps every peak.
        stuff_area: A stuff category is kept iff its pixel count in the image is ``>= stuff_area``
            (``"detectron2"``) or ``> stuff_area`` (``"deeplab2"``); otherwise its pixels are void.
        label_divisor: The ``category * label_divisor + instance`` code of :meth:`encode`.
        flavor: ``"detectron2"`` (default) or ``"deeplab2"``, which differs in three rules: no centre gives
            one thing segment per thing category (detectron2: those pixels are void), stuff is kept iff area
            ``> stuff_area``, and exactly ``top_k`` peaks are all kept.
        batched: :meth:`forward` fuses the batch as padded tensors with the static-shape graph of
            :func:`panoptic.export.export_fusion` (identical results; the images of a batch share their size and
            semantic kind). The graph's nearest-centre search is dense, ``(B, H * W, K)``: for devices and export
            checks, not for CPU speed (the per-image loop groups pixels in cache-sized chunks).

    Example:
        >>> import torch
        >>> from panoptic import CategoryTable, CentreOffsets
        >>> table = CategoryTable.from_coco([{"id": 1, "name": "road", "isthing": 0},
        ...                                  {"id": 2, "name": "car", "isthing": 1}])
        >>> logits = torch.zeros(2, 4, 6)
        >>> logits[1, :, 3:] = 1.0                      # right half: car
        >>> heat = torch.zeros(1, 4, 6)
        >>> heat[0, 1, 4] = 0.9                         # one centre at (y, x) = (1, 4)
        >>> fusion = CentreOffsetFusion(table, stuff_area=1)
        >>> result = fusion([CentreOffsets(logits, heat, torch.zeros(2, 4, 6))])[0]
        >>> result.segment_map[0].tolist(), result.category.tolist(), result.source.tolist()
        ([2, 2, 2, 1, 1, 1], [1, 0], [0, -1])
        >>> fusion.encode(result)[0].tolist()
        [0, 0, 0, 1001, 1001, 1001]
    """

    def __init__(self, table: CategoryTable, threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200,
                 stuff_area: int = 2048, label_divisor: int = 1000, flavor: CentreFlavor = "detectron2",
                 batched: bool = False) -> None:
        super().__init__(table)
        if flavor not in _FLAVORS:
            raise ValueError(f"flavor must be one of {_FLAVORS}, got {flavor!r}.")
        if not isinstance(nms_kernel, int) or nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be an odd int >= 1 (the window is centred on the pixel), got "
                             f"{nms_kernel!r}; use {nms_kernel + 1 if isinstance(nms_kernel, int) else 7}.")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None (keep every centre), got {top_k!r}.")
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}.")
        if not isinstance(stuff_area, int) or stuff_area < 0:
            raise ValueError(f"stuff_area must be an int >= 0 (pixels), got {stuff_area!r}.")
        if not isinstance(label_divisor, int) or label_divisor < 1:
            raise ValueError(f"label_divisor must be an int >= 1, got {label_divisor!r}.")
        self.threshold = float(threshold)
        self.nms_kernel = nms_kernel
        self.top_k = top_k
        self.stuff_area = stuff_area
        self.label_divisor = label_divisor
        self.flavor: CentreFlavor = flavor
        self.batched = bool(batched)

    def forward(self, inputs: Sequence[CentreOffsets]) -> list[PanopticResult]:  # type: ignore[override]
        """Fuse a batch.

        Args:
            inputs: One :class:`~panoptic.CentreOffsets` per image (sizes may differ).

        Returns:
            One result per image, at its ``(H, W)``.

        Raises:
            ValueError: For invalid inputs (the message names the fix).
        """
        if self.batched:
            from ..export import fusion_graph, run_exported  # panoptic.export imports this module

            return run_exported(fusion_graph(self), self, inputs)
        out = []
        for x in checked_centre_inputs(inputs):
            device = x.offsets.device if isinstance(x.offsets, torch.Tensor) else torch.device("cpu")
            # many short passes, the input checks included: never slower than one thread
            with fusion_threads(call_pixels(x.offsets), device):
                x.validate(self.table.num_classes, check_semantic_finite=False)  # checked in the argmax pass
                out.append(self.fuse_image(x))
        return out

    def static_graph(self) -> CentreOffsetGraph:
        """The static-shape module of the per-pixel path (after the centre NMS), which
        :func:`panoptic.export.export_fusion` traces."""
        deeplab2 = self.flavor == "deeplab2"
        return CentreOffsetGraph(self.table.isthing_tensor(), self.stuff_area, deeplab2, deeplab2)

    def fuse_image(self, x: CentreOffsets) -> PanopticResult:  # type: ignore[override]
        """Fuse one image whose shapes are validated (see the class docstring for the rule)."""
        labels, samples = self.semantic_labels(x)
        heat = x.centre_heatmap[0].float()
        centres = self.find_centres(heat)
        k = int(centres.shape[0])
        isthing = self.table.isthing_tensor(labels.device)
        pixels, nearest = self.group_pixels(centres, x.offsets.float(), isthing[labels])
        centre_class = majority_class(nearest, labels.reshape(-1)[pixels], k, self.table.num_classes)
        owner = torch.full_like(labels, -1)
        owner.view(-1)[pixels] = nearest
        class_keep = self.class_kept(labels, isthing, no_centre=k == 0)
        # candidates: the K centres, then one per category (kept stuff; thing categories only without centres)
        pixel = torch.where(owner >= 0, owner, torch.where(class_keep[labels], k + labels, -1))
        c = self.table.num_classes
        dev = labels.device
        result = assemble_result(
            pixel.to(torch.int32),
            torch.cat([centre_class, torch.arange(c, device=dev)]),
            torch.cat([torch.ones(k, dtype=torch.bool, device=dev), isthing]),
            torch.cat([heat[centres[:, 0], centres[:, 1]], torch.full((c,), float("nan"), device=dev)]),
            torch.cat([torch.arange(k, device=dev), torch.full((c,), -1, device=dev)]),
        )
        if samples is not None:
            result = fill_stuff_scores_sampled(result, samples.reshape(c, -1), score_stride(*x.image_size))
        return result

    def semantic_labels(self, x: CentreOffsets) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(H, W)`` int64 category per pixel, the first maximum of the logits (or the given labels).

        Returns:
            The labels, and for logits their ``(C, h', w')`` samples on :func:`score_stride`'s grid (for the stuff
            scores), else ``None``.

        Raises:
            ValueError: If the logits hold NaN or inf (checked in the same pass).
        """
        if x.semantic_kind == "labels":
            return x.semantic[0].long().contiguous(), None  # row-major: the pixel indices below are flat
        logits = x.semantic
        c, h, w = logits.shape
        stride = score_stride(h, w)
        samples = torch.empty((c, -(-h // stride), -(-w // stride)), dtype=logits.dtype, device=logits.device)
        out = torch.empty((h, w), dtype=torch.int32, device=logits.device)
        finite = FiniteCheck(logits)
        first_argmax_keys(logits, c, out, samples=samples, stride=stride, finite=finite)
        finite.raise_if_not_finite()
        return out.long(), samples

    def find_centres(self, heat: torch.Tensor) -> torch.Tensor:
        """Centre NMS.

        Args:
            heat: ``(H, W)`` float32 heatmap.

        Returns:
            ``(K, 2)`` int64 ``(y, x)`` of the centres in row-major order.
        """
        thresholded = torch.where(heat > self.threshold, heat, torch.full_like(heat, -1.0))
        peak = heatmap_peaks(thresholded, self.nms_kernel) & (thresholded > 0)
        if self.top_k is not None:
            values = thresholded[peak]
            n = int(values.numel())
            if n > self.top_k or (n == self.top_k and self.flavor == "detectron2"):
                kth = torch.topk(values, self.top_k).values[-1]
                peak &= thresholded > kth  # strictly greater: every peak tied with the k-th goes
        return torch.nonzero(peak)

    def group_pixels(self, centres: torch.Tensor, offsets: torch.Tensor,
                     thing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each thing pixel's nearest centre to ``(y + dy, x + dx)``, ties to the lowest centre index.

        Args:
            centres: ``(K, 2)`` ``(y, x)``.
            offsets: ``(2, H, W)`` float32, dy then dx.
            thing: ``(H, W)`` bool, pixels whose category is a thing.

        Returns:
            ``(N,)`` int64 flat (row-major) indices of the thing pixels and ``(N,)`` int64 their centre index;
            both empty when ``K = 0``.
        """
        w = thing.shape[1]
        if centres.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=thing.device)
            return empty, empty
        idx = torch.nonzero(thing.reshape(-1))[:, 0]
        ys = torch.div(idx, w, rounding_mode="floor")
        xs = idx - ys * w
        flat = offsets.reshape(2, -1)
        points = torch.stack([ys.float() + flat[0, idx], xs.float() + flat[1, idx]], 1)
        return idx, nearest_centre(points, centres)

    def class_kept(self, labels: torch.Tensor, isthing: torch.Tensor, no_centre: bool) -> torch.Tensor:
        """``(C,)`` bool: whether a category's own segment (outside the centres' segments) is kept.

        Stuff by total area (``>=`` or ``>`` ``stuff_area`` per flavor); thing categories only with
        ``flavor="deeplab2"`` when the image has no centre.
        """
        area = torch.bincount(labels.reshape(-1), minlength=self.table.num_classes)
        big = area > self.stuff_area if self.flavor == "deeplab2" else area >= self.stuff_area
        things = isthing & (no_centre and self.flavor == "deeplab2")
        return torch.where(isthing, things, big)

    def encode(self, result: PanopticResult, void_label: int = -1, dtype: torch.dtype = torch.int64,
               table: CategoryTable | None = None) -> torch.Tensor:
        """detectron2's ``category * label_divisor + instance`` map of a result (see :func:`encode_label_divisor`)."""
        return encode_label_divisor(result, self.label_divisor, void_label, dtype, table)


def majority_class(centre: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """``(K,)`` int64 most frequent category among each centre's pixels, ties to the smallest category.

    Args:
        centre: ``(N,)`` int64 centre index of each grouped pixel, in ``0 .. K - 1``.
        labels: ``(N,)`` int64 category of the same pixels.
        k: Number of centres ``K``.
        num_classes: ``C``.
    """
    votes = torch.bincount(centre * num_classes + labels, minlength=k * num_classes)
    return votes.view(k, num_classes).argmax(1)  # first maximum: the smallest category wins a tie


def encode_label_divisor(result: PanopticResult, label_divisor: int = 1000, void_label: int = -1,
                         dtype: torch.dtype = torch.int64, table: CategoryTable | None = None) -> torch.Tensor:
    """``(H, W)`` map ``category * label_divisor + instance`` as Panoptic-DeepLab writes it.

    Thing segments from a centre (``source >= 0``) are numbered ``1, 2, ...`` per category in segment order
    (detectron2: centre order); stuff, and thing segments without a centre (``flavor="deeplab2"``), get
    instance 0; void pixels get ``void_label``.

    Args:
        result: A result of :class:`CentreOffsetFusion` (or any result).
        label_divisor: ``> max instance number``.
        void_label: Value of void pixels.
        dtype: ``torch.int64``, ``torch.int32`` or ``torch.uint16``.
        table: If given, categories are written as dataset ids; otherwise contiguous ids.

    Raises:
        ValueError: If an instance number reaches ``label_divisor`` or a value does not fit ``dtype``.
    """
    if dtype not in _DTYPE_RANGE:
        raise ValueError(f"dtype must be one of {list(_DTYPE_RANGE)}, got {dtype}.")
    cats = result.category.cpu()
    if table is not None:
        cats = table.dataset_id_tensor()[cats]
    numbered = (result.isthing & (result.source >= 0)).cpu()
    counters: dict[int, int] = {}
    inst = []
    for cat, num in zip(cats.tolist(), numbered.tolist()):  # one step per segment, not per pixel
        counters[cat] = counters.get(cat, 0) + num
        inst.append(counters[cat] if num else 0)
    inst_t = torch.tensor(inst, dtype=torch.int64)
    if inst_t.numel() and int(inst_t.max()) >= label_divisor:
        raise ValueError(f"instance number {int(inst_t.max())} reaches label_divisor={label_divisor}; ids would "
                         "collide with the next category: use a larger label_divisor (e.g. 1000).")
    codes = torch.cat([torch.tensor([void_label]), cats * label_divisor + inst_t])
    seg = result.segment_map
    with fusion_threads(seg.numel(), seg.device):  # the two full-image passes, like a fusion call
        has_void = result.num_segments == 0 or bool((seg == 0).any())
        coded = codes.to(seg.device)[seg.long()].to(dtype)
    used = codes if has_void else codes[1:]
    lo, hi = _DTYPE_RANGE[dtype]
    if used.numel() and (int(used.min()) < lo or int(used.max()) > hi):
        raise ValueError(f"codes in [{int(used.min())}, {int(used.max())}] do not fit {dtype} (range [{lo}, {hi}]): "
                         "use dtype=torch.int64, a smaller label_divisor, or a void_label inside the range "
                         "(uint16 cannot hold -1).")
    return coded
