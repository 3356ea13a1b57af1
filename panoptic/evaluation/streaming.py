"""The streaming panoptic metrics: PQ, PQ-dagger, Boundary PQ and Parsing Covering from one intersection pass.

Everything here is pure per-image statistics and a mergeable state; reading COCO-panoptic files is
:mod:`panoptic.evaluation.files`, tables are :mod:`panoptic.evaluation.tables`.

**PQ** (panopticapi's ``pq_compute``), per image:

* A predicted segment ``p`` and a ground-truth segment ``g`` **match** iff they have the same category,
  ``g`` is not crowd and ``IoU > 0.5`` (strict), with
  ``union = |p| + |g| - |p ∩ g| - |p ∩ GT-void|``: predicted pixels on unlabeled ground truth do not
  enlarge the union. Segments never overlap, so a match is unique.
* An unmatched non-crowd GT segment is a **false negative**; crowd GT segments are never FN.
* An unmatched prediction is a **false positive** unless
  ``(|p ∩ GT-void| + |p ∩ crowd(category of p)|) / |p| > 0.5``. Only one crowd region is remembered per
  category and image: the **last** crowd segment of that category in the GT segment order
  (``segments_info`` order), exactly as panopticapi's dict does.
* Per category: ``PQ = ΣIoU / (TP + ½FP + ½FN)``, ``SQ = ΣIoU / TP`` (0 if ``TP = 0``),
  ``RQ = TP / (TP + ½FP + ½FN)``. The ``All``/``Things``/``Stuff`` rows average over the categories of
  the table (filtered by ``isthing``) with ``TP + FP + FN > 0``; a row with no such category is 0 with
  ``n = 0`` (panopticapi raises ``ZeroDivisionError`` there).

**PQ-dagger** (Porzi et al., CVPR 2019; torchmetrics' ``ModifiedPanopticQuality``): thing classes exactly
as PQ. A stuff class's value is the mean, over its non-crowd GT segments, of the IoU (same union as PQ)
between the segment and the union of the predicted segments of its class, with no 0.5 threshold
(0 where nothing of the class is predicted); ``SQ`` equals it and ``RQ = 1``. A stuff class counts in the
means iff it has a GT segment. Differences from torchmetrics, which has neither crowd nor PQ's void rule:
torchmetrics also removes *predicted*-void pixels from the union and never counts a GT segment that is
mostly predicted void as an FN; it has no crowd regions. Both agree when predictions have no void and
the ground truth no crowd (tested).

**Boundary PQ** (Cheng et al., CVPR 2021; boundary-iou-api's ``coco_panoptic_api``): PQ with every IoU
replaced by ``min(mask IoU, boundary IoU)``, for matching (``> 0.5``) and in the sums. A segment's
boundary is its band of width ``d = round(ratio * diagonal)`` (:mod:`panoptic.evaluation._boundary`);
``boundary IoU = |Bp ∩ Bg| / (|Bp| + |Bg| - |Bp ∩ Bg| - |Bp ∩ GT-void|)``. FP exemptions use the masks,
as there. Difference: the reference marks segment interiors with ``max category id + 1``, which breaks a
segment whose PNG id equals that value; here no id is special.

**Parsing Covering** (Yang et al., DeeperLab; ``tensorflow/models`` ``parsing_covering.py`` and its COCO
driver): GT crowd and void pixels are ignored; each other GT segment ``g`` is covered by
``max IoU(g, p)`` over predictions ``p`` of its category, with ``IoU = |g ∩ p| / (|g| + |p'| - |g ∩ p|)``
and ``p'`` the part of ``p`` on non-ignored GT. ``PC(c) = Σ|g| maxIoU / Σ|g|`` over the GT segments of
``c`` (areas divided by the image's pixel count first, by default, as there); the rows average over the
classes with GT area.

**Floating point and merging.** Integer counts are summed as they come. Every float sum is kept as the
sequence of each image's terms and added at :meth:`PanopticQuality.compute` in image order: matched IoUs
in ascending GT segment id order within an image (pass ``gt_ids``), images in key order (pass ``key``,
e.g. the image's index in the GT JSON) or arrival order. That is panopticapi's single-process order, so PQ
is bit-identical to it, and a merge of shards or ranks equals the one-process run bit for bit.
"""

# Over 500 lines: the four metrics share one intersection pass and one mergeable state; the rules stay together.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..categories import CategoryTable
from ..errors import PanopticError
from ..structures import PanopticResult
from ._boundary import add_boundary, band_width

__all__ = ["MetricConfig", "PanopticQuality"]

METRICS = ("pq", "pq_dagger", "boundary_pq", "pc")
ROWS = (("All", None), ("Things", True), ("Stuff", False))


class MergeError(PanopticError, ValueError):
    """States that cannot be merged: different tables or options, or an image present twice."""


@dataclass(frozen=True)
class MetricConfig:
    """Which metrics a :class:`PanopticQuality` computes, and their options.

    Attributes:
        metrics: Any of ``"pq"``, ``"pq_dagger"``, ``"boundary_pq"``, ``"pc"``; PQ is always computed.
        boundary_ratio: Boundary PQ band width as a fraction of the image diagonal (the paper: 0.02).
        pc_normalize: Parsing Covering divides GT areas by the image's pixel count (tensorflow's default).
    """

    metrics: tuple[str, ...] = ("pq",)
    boundary_ratio: float = 0.02
    pc_normalize: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}.")
        object.__setattr__(self, "metrics", tuple(m for m in METRICS if m in self.metrics or m == "pq"))
        band_width(2, 2, self.boundary_ratio)  # validates the ratio

    @classmethod
    def all(cls, **kwargs: Any) -> MetricConfig:
        """Every metric."""
        return cls(metrics=METRICS, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in shard statistics)."""
        return {"metrics": list(self.metrics), "boundary_ratio": self.boundary_ratio,
                "pc_normalize": self.pc_normalize}


class ImageStats(NamedTuple):
    """What one image adds to the PQ accumulators (contiguous category ids).

    Attributes:
        tp_category: ``(T,)`` int64 category of each match, in accumulation order.
        tp_iou: ``(T,)`` float64 IoU of each match, same order.
        fn: ``(C,)`` int64 false negatives per category.
        fp: ``(C,)`` int64 false positives per category.
    """

    tp_category: np.ndarray
    tp_iou: np.ndarray
    fn: np.ndarray
    fp: np.ndarray


class ImageRecord(NamedTuple):
    """Everything one image adds, for every metric.

    Attributes:
        counts: name -> ``(C,)`` int64 counts (``tp``, ``fp``, ``fn``, ``bpq_tp``, ..., ``dagger_n``).
        terms: name -> ``((K,) int64 category, (K,) float64 value)``: the float terms in the order they
            are added (``iou``, ``bpq_iou``, ``dagger_iou``, ``pc_iou``, ``pc_area``).
    """

    counts: dict[str, np.ndarray]
    terms: dict[str, tuple[np.ndarray, np.ndarray]]


def match_segments(inter: np.ndarray, gt_category: np.ndarray, gt_crowd: np.ndarray, pred_category: np.ndarray,
                   num_classes: int, gt_order: np.ndarray | None = None, *,
                   boundary: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> ImageStats:
    """Match the segments of one image from its intersection matrix (PQ, or Boundary PQ with ``boundary``).

    Args:
        inter: ``(Sg + 1, Sp + 1)`` int64 pixel counts of (GT segment, predicted segment); row/column 0
            is void. GT areas are the row sums, predicted areas the column sums.
        gt_category: ``(Sg,)`` int contiguous category of each GT segment.
        gt_crowd: ``(Sg,)`` bool crowd flags.
        pred_category: ``(Sp,)`` int contiguous category of each predicted segment.
        num_classes: ``C``.
        gt_order: ``(Sg,)`` sort key of the GT segments for the order matched IoUs are accumulated in
            (panopticapi: ascending PNG id); ``None`` keeps segment order.
        boundary: ``(binter, gt_band_area, pred_band_area)``: ``(Sg + 1, Sp + 1)`` counts of pixels in both
            boundary bands (row 0: GT void pixels in the predicted band), ``(Sg,)`` and ``(Sp,)`` band
            areas. The IoU becomes ``min(mask IoU, boundary IoU)``.

    Returns:
        The image's :class:`ImageStats`.
    """
    sg, sp = inter.shape[0] - 1, inter.shape[1] - 1
    gt_category = np.asarray(gt_category, dtype=np.int64)
    pred_category = np.asarray(pred_category, dtype=np.int64)
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    gt_area = inter[1:].sum(1)
    pred_area = inter[:, 1:].sum(0)
    pred_on_void = inter[0, 1:]
    both = inter[1:, 1:]
    cand = (both > 0) & (gt_category[:, None] == pred_category[None, :]) & ~gt_crowd[:, None]
    gi, pj = np.nonzero(cand)
    i = both[gi, pj]
    union = pred_area[pj] + gt_area[gi] - i - pred_on_void[pj]
    iou = i / union
    if boundary is not None:
        binter, gb_area, pb_area = boundary
        bi = binter[gi + 1, pj + 1]
        biou = bi / (np.asarray(pb_area)[pj] + np.asarray(gb_area)[gi] - bi - binter[0, pj + 1])
        iou = np.minimum(iou, biou)
    hit = iou > 0.5
    gi, pj, iou = gi[hit], pj[hit], iou[hit]
    if gt_order is not None and gi.size > 1:
        order = np.argsort(np.asarray(gt_order)[gi], kind="stable")
        gi, pj, iou = gi[order], pj[order], iou[order]
    gt_matched = np.zeros(sg, dtype=bool)
    gt_matched[gi] = True
    pred_matched = np.zeros(sp, dtype=bool)
    pred_matched[pj] = True
    fn = np.bincount(gt_category[~gt_matched & ~gt_crowd], minlength=num_classes)
    # Last crowd segment of each category (segment order), as panopticapi's crowd dict keeps it.
    crowd_of = np.full(num_classes, -1, dtype=np.int64)
    crowd_idx = np.nonzero(gt_crowd)[0]
    if crowd_idx.size:
        np.maximum.at(crowd_of, gt_category[crowd_idx], crowd_idx)
    crowd_row = crowd_of[pred_category] if sp else np.zeros(0, dtype=np.int64)
    on_crowd = np.where(crowd_row >= 0, both[np.maximum(crowd_row, 0), np.arange(sp)], 0) if sg else 0
    ignored = (pred_on_void + on_crowd) / np.maximum(pred_area, 1) > 0.5
    fp = np.bincount(pred_category[~pred_matched & ~ignored], minlength=num_classes)
    return ImageStats(gt_category[gi], iou.astype(np.float64), fn, fp)


def _dagger_terms(inter: np.ndarray, gt_category: np.ndarray, gt_crowd: np.ndarray, pred_category: np.ndarray,
                  stuff: np.ndarray, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """PQ-dagger's stuff terms: ``(class, IoU)`` of each non-crowd stuff GT segment with its class's prediction."""
    c = stuff.size
    sel = np.nonzero(stuff[gt_category] & ~gt_crowd)[0]
    if order is not None and sel.size > 1:
        sel = sel[np.argsort(order[sel], kind="stable")]
    if sel.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    # Predictions of one class are one region: sum their columns per class.
    onehot = np.zeros((pred_category.size, c), dtype=np.int64)
    onehot[np.arange(pred_category.size), pred_category] = 1
    per_class = inter[:, 1:] @ onehot                    # (Sg + 1, C)
    cats = gt_category[sel]
    i = per_class[sel + 1, cats]
    p_area = per_class.sum(0)[cats]
    union = p_area + inter[sel + 1].sum(1) - i - per_class[0, cats]
    return cats, i / union


def _pc_terms(inter: np.ndarray, gt_category: np.ndarray, gt_crowd: np.ndarray, pred_category: np.ndarray,
              num_classes: int, num_pixels: int, normalize: bool) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Parsing Covering's per-class ``(Σ area·maxIoU, Σ area)`` of one image (areas normalized if asked)."""
    both = inter[1:, 1:]
    gt_area = inter[1:].sum(1)
    # Prediction areas on non-ignored GT (not void, not crowd).
    p_area = both[~gt_crowd].sum(0)
    cand = (both > 0) & (gt_category[:, None] == pred_category[None, :]) & ~gt_crowd[:, None]
    gi, pj = np.nonzero(cand)
    i = both[gi, pj]
    best = np.zeros(gt_area.size, dtype=np.float64)
    if gi.size:
        np.maximum.at(best, gi, i / (gt_area[gi] + p_area[pj] - i))
    keep = ~gt_crowd
    area = gt_area[keep] / num_pixels if normalize else gt_area[keep].astype(np.float64)
    cats = gt_category[keep]
    wsum = np.bincount(cats, weights=best[keep] * area, minlength=num_classes)
    asum = np.bincount(cats, weights=area, minlength=num_classes)
    present = np.nonzero(np.bincount(cats, minlength=num_classes))[0]
    return (present, wsum[present]), (present, asum[present])


def image_record(m: np.ndarray, gt_category: np.ndarray, gt_crowd: np.ndarray, pred_category: np.ndarray,
                 isthing: np.ndarray, config: MetricConfig, gt_order: np.ndarray | None = None,
                 num_pixels: int | None = None) -> ImageRecord:
    """Every metric's statistics of one image from its intersection counts.

    Args:
        m: ``(Sg + 1, Sp + 1)`` intersection counts, or ``(Sg + 1, 2, Sp + 1, 2)`` split by
            (GT pixel in its band or void, predicted pixel in its band) when Boundary PQ is computed.
        gt_category: ``(Sg,)`` contiguous category of each GT segment.
        gt_crowd: ``(Sg,)`` bool crowd flags.
        pred_category: ``(Sp,)`` contiguous category of each predicted segment.
        isthing: ``(C,)`` bool.
        config: Which metrics.
        gt_order: As in :func:`match_segments`.
        num_pixels: The image's pixel count (Parsing Covering's normalization); default ``m.sum()``.
    """
    c = isthing.size
    gt_category = np.asarray(gt_category, dtype=np.int64)
    pred_category = np.asarray(pred_category, dtype=np.int64)
    gt_crowd = np.asarray(gt_crowd, dtype=bool)
    order = None if gt_order is None else np.asarray(gt_order, dtype=np.int64)
    boundary = None
    if m.ndim == 4:
        inter = m.sum((1, 3))
        boundary = (m[:, 1, :, 1], m[1:, 1].sum((1, 2)), m[:, :, 1:, 1].sum((0, 1)))
    else:
        inter = m
    s = match_segments(inter, gt_category, gt_crowd, pred_category, c, order)
    counts = {"tp": np.bincount(s.tp_category, minlength=c), "fp": s.fp, "fn": s.fn}
    terms = {"iou": (s.tp_category, s.tp_iou)}
    if "pq_dagger" in config.metrics:
        cats, ious = _dagger_terms(inter, gt_category, gt_crowd, pred_category, ~isthing, order)
        counts["dagger_n"] = np.bincount(cats, minlength=c)
        terms["dagger_iou"] = (cats, ious)
    if "boundary_pq" in config.metrics:
        if boundary is None:
            raise ValueError("Boundary PQ needs the (Sg + 1, 2, Sp + 1, 2) counts; see intersection_matrix(band=...).")
        b = match_segments(inter, gt_category, gt_crowd, pred_category, c, order, boundary=boundary)
        counts.update(bpq_tp=np.bincount(b.tp_category, minlength=c), bpq_fp=b.fp, bpq_fn=b.fn)
        terms["bpq_iou"] = (b.tp_category, b.tp_iou)
    if "pc" in config.metrics:
        npix = int(inter.sum()) if num_pixels is None else int(num_pixels)
        terms["pc_iou"], terms["pc_area"] = _pc_terms(inter, gt_category, gt_crowd, pred_category, c, npix,
                                                      config.pc_normalize)
    return ImageRecord(counts, terms)


def _bincount(key: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount`` of a CPU array, through torch when it runs single-threaded.

    torch's CPU bincount is ~3x faster than numpy's but runs parallel min/max reductions that stall
    badly when the cores are busy, so it is only used with one intra-op thread (the pool workers).
    """
    if torch.get_num_threads() == 1:
        kt = torch.from_numpy(key.view(np.int16) if key.dtype == np.uint16 else key)
        return torch.bincount(kt, minlength=n).numpy()
    return np.bincount(key, minlength=n)


def intersection_matrix(gt_map: torch.Tensor, num_gt: int, pred_map: torch.Tensor, num_pred: int,
                        band: int | None = None) -> np.ndarray:
    """``(Sg + 1, Sp + 1)`` int64 pixel counts of (GT id, predicted id) from two ``(H, W)`` id maps.

    One ``bincount`` over ``gt * (Sp + 1) + pred`` (numpy on CPU, torch on other devices); ids must lie
    in ``0..S``. With ``band`` (Boundary PQ's band width in pixels) the counts are split by boundary
    membership: ``(Sg + 1, 2, Sp + 1, 2)``, the second axis 1 for GT pixels in their segment's band or
    void, the last axis 1 for predicted pixels in their segment's band (computed on the CPU).
    """
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"segment maps differ in shape: {tuple(gt_map.shape)} vs {tuple(pred_map.shape)}.")
    n = (num_gt + 1) * (num_pred + 1)
    bad = ValueError(f"segment ids outside 0..S ({num_gt} GT, {num_pred} predicted segments); "
                     "call result.validate() to find the broken invariant.")
    if band is not None:
        g = gt_map.detach().cpu().numpy()
        p = pred_map.detach().cpu().numpy()
        if g.size and (min(g.min(), p.min()) < 0 or g.max() > num_gt or p.max() > num_pred):
            raise bad
        stride = num_pred + 1
        dt = np.int32 if 4 * n < 2**31 else np.int64
        key = np.multiply(g, dt(4 * stride), dtype=dt)
        key += (2 * p).astype(dt)
        add_boundary(g.astype(np.uint32), key, band, 2 * stride, void_too=True)
        add_boundary(p.astype(np.uint32), key, band, 1)
        return _bincount(key.reshape(-1), 4 * n).reshape(num_gt + 1, 2, num_pred + 1, 2)
    if gt_map.device.type == "cpu" and pred_map.device.type == "cpu":
        dt = np.int32 if n < 2**31 else np.int64
        key = np.multiply(gt_map.detach().reshape(-1).numpy(), dt(num_pred + 1), dtype=dt)
        np.add(key, pred_map.detach().reshape(-1).numpy(), out=key, casting="unsafe")
        try:
            counts = _bincount(key, n)
        except (ValueError, RuntimeError):  # negative ids
            raise bad from None
        if counts.size != n:
            raise bad
        return counts.reshape(num_gt + 1, num_pred + 1)
    tdt = torch.int32 if n < 2**31 else torch.int64
    key_t = gt_map.reshape(-1).to(tdt) * (num_pred + 1) + pred_map.reshape(-1).to(device=gt_map.device, dtype=tdt)
    if key_t.numel() and int(key_t.min()) < 0:
        raise bad
    counts_t = torch.bincount(key_t, minlength=n)
    if counts_t.numel() != n:
        raise bad
    return counts_t.cpu().numpy().reshape(num_gt + 1, num_pred + 1)


def _pq_row(iou: float, tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    # Same operations, in the same order, as panopticapi's PQStat.pq_average.
    denom = tp + 0.5 * fp + 0.5 * fn
    return iou / denom, (iou / tp if tp != 0 else 0.0), tp / denom


_COUNTS = {"pq": ("tp", "fp", "fn"), "pq_dagger": ("dagger_n",), "boundary_pq": ("bpq_tp", "bpq_fp", "bpq_fn"),
           "pc": ()}
_TERMS = {"pq": ("iou",), "pq_dagger": ("dagger_iou",), "boundary_pq": ("bpq_iou",), "pc": ("pc_iou", "pc_area")}


class PanopticQuality:
    """Streaming PQ/SQ/RQ (and, on request, PQ-dagger, Boundary PQ, Parsing Covering) over result pairs.

    Integer counts are per category ``(C,)`` in the table's channel order; float sums are kept as each
    image's terms and added in image order by :meth:`compute` (see the module docs), so :meth:`merge`
    and :meth:`merge_state` of disjoint image sets equal one pass over all of them, bit for bit.
    :meth:`export_state` is a small picklable / JSON-able state for ``torch.distributed``
    ``all_gather_object`` or shard files.

    Args:
        table: The category table; GT and prediction categories are its contiguous ids.
        category_order: Dataset ids in the order the class means are summed (panopticapi: the GT JSON
            ``categories`` order). Only the last bit of the ``All`` row depends on it. Default: the
            table's channel order.
        config: Which metrics (default: PQ only).

    Example:
        >>> import numpy as np
        >>> from panoptic.data import generate_scene
        >>> scene = generate_scene(np.random.default_rng(0), 32)
        >>> metric = PanopticQuality(scene.table, config=MetricConfig.all())
        >>> metric.update(scene.panoptic, scene.panoptic)  # (ground truth, prediction) per image
        >>> metric.compute()["All"]["pq"]
        1.0
    """

    def __init__(self, table: CategoryTable, category_order: Sequence[int] | None = None,
                 config: MetricConfig | None = None) -> None:
        self.table = table
        self.config = config or MetricConfig()
        if category_order is None:
            self._order = list(range(table.num_classes))
        else:
            order = [int(c) for c in category_order]
            if sorted(order) != sorted(table.dataset_ids):
                raise ValueError(f"category_order must list each dataset id of the table once, got {order}; "
                                 f"the table has {list(table.dataset_ids)}.")
            self._order = [table.to_contiguous(c) for c in order]
        self._isthing = np.array([c.isthing for c in table.categories], dtype=bool)
        self.reset()

    # ---------------------------------------------------------------------------------- state
    @property
    def _count_names(self) -> list[str]:
        return [n for m in self.config.metrics for n in _COUNTS[m]]

    @property
    def _term_names(self) -> list[str]:
        return [n for m in self.config.metrics for n in _TERMS[m]]

    def reset(self) -> None:
        """Forget every image."""
        c = self.table.num_classes
        self._counts = {k: np.zeros(c, dtype=np.int64) for k in self._count_names}
        self._base = {k: np.zeros(c, dtype=np.float64) for k in self._term_names}
        self._records: list[tuple[int | None, dict[str, tuple[np.ndarray, np.ndarray]]]] = []
        self._keys: set[int] = set()
        self.num_images = 0

    def add_record(self, record: ImageRecord, key: int | None = None) -> None:
        """Accumulate one image's :class:`ImageRecord` (``key``: its position in the image order).

        Raises:
            MergeError: ``key`` was already added, or keys are given for some images and not others.
        """
        if self._records and (key is None) != (self._records[0][0] is None):
            raise MergeError("pass a key for every image or for none (keys order the float sums).")
        if key is not None:
            key = int(key)
            if key in self._keys:
                raise MergeError(f"image key {key} was added twice; each image must be evaluated once.")
            self._keys.add(key)
        for k in self._counts:
            self._counts[k] += record.counts[k]
        self._records.append((key, {k: record.terms[k] for k in self._base}))
        self.num_images += 1

    def add_image_stats(self, stats: ImageStats, key: int | None = None) -> None:
        """Accumulate one image's PQ :class:`ImageStats` (from :func:`match_segments`); PQ-only metrics."""
        if self.config.metrics != ("pq",):
            raise ValueError("add_image_stats holds PQ only; use add_record(image_record(...)) for the other metrics.")
        c = self.table.num_classes
        self.add_record(ImageRecord({"tp": np.bincount(stats.tp_category, minlength=c), "fp": stats.fp, "fn": stats.fn},
                                    {"iou": (stats.tp_category, stats.tp_iou)}), key)

    def _sums(self) -> dict[str, np.ndarray]:
        """Float sums: the base plus every image's terms, added one by one in image order."""
        records = self._records
        if records and records[0][0] is not None:
            records = sorted(records, key=lambda r: r[0])
        out = {}
        for name, base in self._base.items():
            s = base.copy()
            parts = [t[name] for _, t in records]
            if parts:
                cats = np.concatenate([p[0] for p in parts]).astype(np.int64)
                vals = np.concatenate([p[1] for p in parts]).astype(np.float64)
                np.add.at(s, cats, vals)  # unbuffered and in index order: the sequential sum
            out[name] = s
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Totals as tensors: ``iou_sum`` ``(C,)`` float64, ``tp``/``fp``/``fn`` ``(C,)`` int64,
        ``num_images`` ``()`` int64 (plus the other metrics' totals when configured). Summing these over
        processes and loading the sum merges runs, up to float rounding; :meth:`export_state` merges exactly."""
        sums = self._sums()
        out = {"iou_sum": torch.from_numpy(sums["iou"])}
        out.update({k: torch.from_numpy(v.copy()) for k, v in self._counts.items()})
        out.update({f"{k}_sum": torch.from_numpy(v) for k, v in sums.items() if k != "iou"})
        out["num_images"] = torch.tensor(self.num_images, dtype=torch.int64)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace everything by the totals in ``state`` (from :meth:`state_dict`, possibly summed)."""
        c = self.table.num_classes
        names = {**{k: k for k in self._counts}, **{k: ("iou_sum" if k == "iou" else f"{k}_sum") for k in self._base}}
        for k in names.values():
            if k not in state or tuple(state[k].shape) != (c,):
                raise ValueError(f"state[{k!r}] must be a ({c},) tensor; pass a PanopticQuality.state_dict() "
                                 "made with the same category table and metrics.")
        self.reset()
        for k in self._counts:
            self._counts[k] = state[k].cpu().numpy().astype(np.int64)
        for k in self._base:
            self._base[k] = state[names[k]].double().cpu().numpy().copy()
        self.num_images = int(state.get("num_images", torch.tensor(0)))

    def export_state(self) -> dict[str, Any]:
        """A JSON-able, picklable state that :meth:`merge_state` adds back exactly.

        Returns:
            ``{"categories", "config", "num_images", "counts": {name: [C ints]}, "keys": [...],
            "terms": {name: [[classes...], [values...]] per image}}`` (floats round-trip exactly in JSON).
        """
        if any(v.any() for v in self._base.values()):
            raise ValueError("this metric was loaded from summed totals (load_state_dict); its per-image terms are "
                             "gone, so it cannot be exported for an exact merge.")
        return {"categories": [c.id for c in self.table.categories], "config": self.config.to_dict(),
                "num_images": self.num_images, "counts": {k: v.tolist() for k, v in self._counts.items()},
                "keys": [k for k, _ in self._records],
                "terms": {n: [[t[n][0].tolist(), t[n][1].tolist()] for _, t in self._records] for n in self._base}}

    def merge_state(self, state: Mapping[str, Any]) -> PanopticQuality:
        """Add an :meth:`export_state` of another process or shard (in place); returns ``self``.

        Raises:
            MergeError: Different categories or metric options, or an image key already present.
        """
        if list(state.get("categories", [])) != [c.id for c in self.table.categories]:
            raise MergeError("the state was made with other categories; merge states of the same ground truth.")
        if state.get("config") != self.config.to_dict():
            raise MergeError(f"the state was made with metric options {state.get('config')}, this metric has "
                             f"{self.config.to_dict()}; use the same --metrics/--boundary-ratio everywhere.")
        keys = list(state["keys"])
        if len(set(k for k in keys if k is not None)) != len([k for k in keys if k is not None]):
            raise MergeError("the state holds an image twice.")
        c = self.table.num_classes
        for i, key in enumerate(keys):
            terms = {n: (np.asarray(state["terms"][n][i][0], dtype=np.int64),
                         np.asarray(state["terms"][n][i][1], dtype=np.float64)) for n in self._base}
            zero = {k: np.zeros(c, dtype=np.int64) for k in self._counts}
            self.add_record(ImageRecord(zero, terms), key)
        for k in self._counts:
            self._counts[k] += np.asarray(state["counts"][k], dtype=np.int64)
        return self

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        """Add ``other``'s images to this one (in place); returns ``self``. Exact: see the class docs."""
        if other.table != self.table:
            raise MergeError("cannot merge PanopticQuality metrics built with different category tables.")
        if other.config != self.config:
            raise MergeError("cannot merge PanopticQuality metrics computing different metrics.")
        for k in self._base:
            self._base[k] = self._base[k] + other._base[k]
        c = self.table.num_classes
        zero = {k: np.zeros(c, dtype=np.int64) for k in self._counts}
        for key, terms in other._records:
            self.add_record(ImageRecord(zero, terms), key)
        for k in self._counts:
            self._counts[k] += other._counts[k]
        return self

    # --------------------------------------------------------------------------------- update
    def update(self, gt: PanopticResult, pred: PanopticResult, gt_ids: torch.Tensor | Sequence[int] | None = None,
               key: int | None = None) -> None:
        """Add one image.

        Args:
            gt: Ground truth; ``gt.iscrowd`` marks crowd segments, segment id 0 is void.
            pred: Prediction of the same ``(H, W)``; void (id 0, including ``unknown_mask``) is never an FP.
                Its ``iscrowd`` is ignored.
            gt_ids: ``(Sg,)`` original ids of the GT segments (e.g. the COCO PNG ids, in ``segments_info``
                order). Only the float summation order depends on it; give it for results bit-identical
                to panopticapi and :func:`~panoptic.evaluation.files.pq_compute`.
            key: The image's position in the evaluation order (e.g. its dataset index): float sums are
                added in key order, so processes that each see some images merge exactly. Give it for
                every image or for none (then arrival order).

        Raises:
            ValueError: On a size mismatch or categories/ids outside the table or segment table.
        """
        if gt.image_size != pred.image_size:
            raise ValueError(f"prediction size {pred.image_size} differs from the ground truth size {gt.image_size}; "
                             "resize the prediction's segment_map to the GT size with nearest-neighbour "
                             "interpolation before evaluating.")
        c = self.table.num_classes
        gcat = gt.category.detach().cpu().numpy().astype(np.int64)
        pcat = pred.category.detach().cpu().numpy().astype(np.int64)
        for name, cat in (("gt", gcat), ("pred", pcat)):
            if cat.size and (cat.min() < 0 or cat.max() >= c):
                raise ValueError(f"{name}.category has values outside 0..{c - 1}; categories must be contiguous "
                                 "ids of the PanopticQuality table (use table.to_contiguous).")
        sg, sp = gcat.size, pcat.size
        order = None
        if gt_ids is not None:
            order = np.asarray(gt_ids.cpu() if isinstance(gt_ids, torch.Tensor) else gt_ids, dtype=np.int64)
            if order.shape != (sg,):
                raise ValueError(f"gt_ids must hold one id per GT segment ({sg}), got shape {order.shape}.")
        h, w = gt.image_size
        band = band_width(h, w, self.config.boundary_ratio) if "boundary_pq" in self.config.metrics else None
        m = intersection_matrix(gt.segment_map, sg, pred.segment_map, sp, band)
        inter = m.sum((1, 3)) if m.ndim == 4 else m
        for name, area in (("gt", inter[1:].sum(1)), ("pred", inter[:, 1:].sum(0))):
            if not area.all():
                raise ValueError(f"{name} has segments with no pixel ({np.nonzero(area == 0)[0][:10].tolist()}, "
                                 "0-based); call result.validate() and rebuild it with assemble_result.")
        record = image_record(m, gcat, gt.iscrowd.detach().cpu().numpy(), pcat, self._isthing, self.config, order,
                              h * w)
        self.add_record(record, key)

    # -------------------------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """PQ, SQ, RQ and ``n`` for ``All``, ``Things`` and ``Stuff``, plus ``per_class``; the other metrics
        under their names.

        Returns:
            ``{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {dataset_id:
            {"pq", "sq", "rq", "tp", "fp", "fn", "iou_sum", "name", "isthing"}}, "num_images": int}``;
            ``per_class`` follows ``category_order`` and holds every category (zeros where
            ``TP + FP + FN = 0``). Values are Python floats; a row with ``n = 0`` is all 0. With more
            metrics, ``"pq_dagger"`` and ``"boundary_pq"`` hold the same shape (``All``/``Things``/``Stuff``/
            ``per_class``) and ``"pc"`` holds ``{"All": {"pc", "n"}, ..., "per_class": {id: {"pc", "area",
            "name", "isthing"}}}``.
        """
        sums = self._sums()
        cnt = self._counts
        out = self._pq_table(sums["iou"], cnt["tp"], cnt["fp"], cnt["fn"])
        if "pq_dagger" in self.config.metrics:
            out["pq_dagger"] = self._dagger_table(sums["iou"], sums["dagger_iou"])
        if "boundary_pq" in self.config.metrics:
            out["boundary_pq"] = self._pq_table(sums["bpq_iou"], cnt["bpq_tp"], cnt["bpq_fp"], cnt["bpq_fn"])
            del out["boundary_pq"]["num_images"]
        if "pc" in self.config.metrics:
            out["pc"] = self._pc_table(sums["pc_iou"], sums["pc_area"])
        return out

    def _rows(self, per_class_vals: dict[int, tuple[float, ...] | None], keys: tuple[str, ...]) -> dict[str, Any]:
        """All/Things/Stuff means over the classes with a value (``None``: not counted), in category order."""
        rows: dict[str, Any] = {}
        for name, isthing in ROWS:
            acc = [0.0] * len(keys)
            n = 0
            for k in self._order:
                if isthing is not None and bool(self._isthing[k]) != isthing:
                    continue
                vals = per_class_vals[k]
                if vals is None:
                    continue
                n += 1
                for j, v in enumerate(vals):
                    acc[j] += v
            rows[name] = {**{key: (a / n if n else 0.0) for key, a in zip(keys, acc)}, "n": n}
        return rows

    def _class_info(self, k: int) -> dict[str, Any]:
        cat = self.table.categories[k]
        return {"name": cat.name, "isthing": cat.isthing}

    def _pq_table(self, iou: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
        vals: dict[int, tuple[float, ...] | None] = {}
        per_class: dict[int, dict[str, Any]] = {}
        for k in self._order:
            t, f, n_ = int(tp[k]), int(fp[k]), int(fn[k])
            v = _pq_row(float(iou[k]), t, f, n_) if t + f + n_ else None
            vals[k] = v
            pq, sq, rq = v or (0.0, 0.0, 0.0)
            per_class[self.table.categories[k].id] = {"pq": pq, "sq": sq, "rq": rq, "tp": t, "fp": f, "fn": n_,
                                                      "iou_sum": float(iou[k]), **self._class_info(k)}
        out = self._rows(vals, ("pq", "sq", "rq"))
        out["per_class"] = per_class
        out["num_images"] = self.num_images
        return out

    def _dagger_table(self, iou: np.ndarray, stuff_iou: np.ndarray) -> dict[str, Any]:
        tp, fp, fn, n_stuff = self._counts["tp"], self._counts["fp"], self._counts["fn"], self._counts["dagger_n"]
        vals: dict[int, tuple[float, ...] | None] = {}
        per_class: dict[int, dict[str, Any]] = {}
        for k in self._order:
            if self._isthing[k]:
                t, f, n_ = int(tp[k]), int(fp[k]), int(fn[k])
                v = _pq_row(float(iou[k]), t, f, n_) if t + f + n_ else None
                extra = {"tp": t, "fp": f, "fn": n_, "iou_sum": float(iou[k])}
            else:
                n_ = int(n_stuff[k])
                mean = float(stuff_iou[k]) / n_ if n_ else 0.0
                v = (mean, mean, 1.0) if n_ else None
                extra = {"segments": n_, "iou_sum": float(stuff_iou[k])}
            vals[k] = v
            pq, sq, rq = v or (0.0, 0.0, 0.0)
            per_class[self.table.categories[k].id] = {"pq": pq, "sq": sq, "rq": rq, **extra, **self._class_info(k)}
        out = self._rows(vals, ("pq", "sq", "rq"))
        out["per_class"] = per_class
        return out

    def _pc_table(self, wiou: np.ndarray, area: np.ndarray) -> dict[str, Any]:
        vals: dict[int, tuple[float, ...] | None] = {}
        per_class: dict[int, dict[str, Any]] = {}
        for k in self._order:
            a = float(area[k])
            v = (float(wiou[k]) / a,) if a != 0 else None
            vals[k] = v
            per_class[self.table.categories[k].id] = {"pc": v[0] if v else 0.0, "area": a, **self._class_info(k)}
        out = self._rows(vals, ("pc",))
        out["per_class"] = per_class
        return out

    def __repr__(self) -> str:
        return (f"PanopticQuality(num_classes={self.table.num_classes}, metrics={list(self.config.metrics)}, "
                f"num_images={self.num_images})")
