"""Panoptic quality (PQ = SQ x RQ) with panopticapi's exact rules: a streaming metric and a file evaluator.

Rules (those of ``panopticapi.evaluation.pq_compute``), per image:

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

Void is segment id 0 on both sides (a prediction's ``unknown_mask`` pixels are void in its
``segment_map``), so a predicted void pixel is never a false positive.

**Floating point.** Matched IoUs are added to a per-category running sum image by image, within an
image in ascending GT segment id order, and the class means are summed in the GT ``categories`` order:
the same operations in the same order as panopticapi in a single process, so results are bit-identical
to it. Pass ``gt_ids`` (the original PNG ids) to :meth:`PanopticQuality.update` to get that order from
in-memory results; without it segment-table order is used (differences of ~1e-16 are then possible).
panopticapi's own multi-process run sums per-process partial sums and differs from its single-process
result by the same ~1e-16.

Differences from panopticapi, all on malformed input: inconsistent PNG/``segments_info`` ids are
errors on both sides (panopticapi ignores GT PNG ids missing from the JSON and counts JSON-only GT
segments as FN); GT areas are the pixel counts (panopticapi trusts the JSON ``area``; a warning tells
when the two differ); a prediction without ground truth is an error (panopticapi ignores it).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..categories import CategoryTable
from ..formats import from_coco
from ..png import PNG_SIGNATURE, read_png_ids
from ..structures import PanopticResult

__all__ = [
    "ImageStats",
    "PanopticQuality",
    "format_pq_results",
    "intersection_matrix",
    "load_coco_pair",
    "match_segments",
    "pq_compute",
    "read_png_ids",
]

_ROWS = (("All", None), ("Things", True), ("Stuff", False))


class ImageStats(NamedTuple):
    """What one image adds to the accumulators (contiguous category ids).

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


def match_segments(inter: np.ndarray, gt_category: np.ndarray, gt_crowd: np.ndarray, pred_category: np.ndarray,
                   num_classes: int, gt_order: np.ndarray | None = None) -> ImageStats:
    """Match the segments of one image from its intersection matrix.

    Args:
        inter: ``(Sg + 1, Sp + 1)`` int64 pixel counts of (GT segment, predicted segment); row/column 0
            is void. GT areas are the row sums, predicted areas the column sums.
        gt_category: ``(Sg,)`` int contiguous category of each GT segment.
        gt_crowd: ``(Sg,)`` bool crowd flags.
        pred_category: ``(Sp,)`` int contiguous category of each predicted segment.
        num_classes: ``C``.
        gt_order: ``(Sg,)`` sort key of the GT segments for the order matched IoUs are accumulated in
            (panopticapi: ascending PNG id); ``None`` keeps segment order.

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


def _pq_row(iou: float, tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    # Same operations, in the same order, as panopticapi's PQStat.pq_average.
    denom = tp + 0.5 * fp + 0.5 * fn
    return iou / denom, (iou / tp if tp != 0 else 0.0), tp / denom


class PanopticQuality:
    """Streaming PQ/SQ/RQ over in-memory :class:`~panoptic.PanopticResult` pairs.

    Accumulators are per category: ``iou_sum`` (float64), ``tp``, ``fp``, ``fn`` (int64), all ``(C,)``
    in the table's channel order. Results of several processes can be combined with :meth:`merge` or
    by summing :meth:`state_dict` tensors (e.g. ``torch.distributed.all_reduce``) and loading the sum.

    Args:
        table: The category table; GT and prediction categories are its contiguous ids.
        category_order: Dataset ids in the order the class means are summed (panopticapi: the GT JSON
            ``categories`` order). Only the last bit of the ``All`` row depends on it. Default: the
            table's channel order.

    Example:
        >>> metric = PanopticQuality(table)                      # doctest: +SKIP
        >>> for gt, pred in pairs:                               # doctest: +SKIP
        ...     metric.update(gt, pred)
        >>> metric.compute()["All"]["pq"]                        # doctest: +SKIP
    """

    def __init__(self, table: CategoryTable, category_order: Sequence[int] | None = None) -> None:
        self.table = table
        if category_order is None:
            self._order = list(range(table.num_classes))
        else:
            order = [int(c) for c in category_order]
            if sorted(order) != sorted(table.dataset_ids):
                raise ValueError(f"category_order must list each dataset id of the table once, got {order}; "
                                 f"the table has {list(table.dataset_ids)}.")
            self._order = [table.to_contiguous(c) for c in order]
        self._isthing = [c.isthing for c in table.categories]
        self.reset()

    # ---------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Zero every accumulator."""
        c = self.table.num_classes
        self._iou = [0.0] * c
        self._tp = np.zeros(c, dtype=np.int64)
        self._fp = np.zeros(c, dtype=np.int64)
        self._fn = np.zeros(c, dtype=np.int64)
        self.num_images = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Accumulators as tensors: ``iou_sum`` ``(C,)`` float64, ``tp``/``fp``/``fn`` ``(C,)`` int64,
        ``num_images`` ``()`` int64. Summing these over processes and loading the sum merges the runs."""
        return {"iou_sum": torch.tensor(self._iou, dtype=torch.float64), "tp": torch.from_numpy(self._tp.copy()),
                "fp": torch.from_numpy(self._fp.copy()), "fn": torch.from_numpy(self._fn.copy()),
                "num_images": torch.tensor(self.num_images, dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the accumulators by ``state`` (from :meth:`state_dict`, possibly summed over processes)."""
        c = self.table.num_classes
        for k in ("iou_sum", "tp", "fp", "fn"):
            if k not in state or tuple(state[k].shape) != (c,):
                raise ValueError(f"state[{k!r}] must be a ({c},) tensor; pass a PanopticQuality.state_dict() "
                                 "made with the same category table.")
        self._iou = [float(v) for v in state["iou_sum"].double().tolist()]
        self._tp = state["tp"].cpu().numpy().astype(np.int64)
        self._fp = state["fp"].cpu().numpy().astype(np.int64)
        self._fn = state["fn"].cpu().numpy().astype(np.int64)
        self.num_images = int(state.get("num_images", torch.tensor(0)))

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        """Add ``other``'s accumulators to this one (in place); returns ``self``.

        IoU sums are added as totals, like panopticapi's multi-process run, so a merged result can differ
        from one sequential pass by ~1e-16.
        """
        if other.table != self.table:
            raise ValueError("cannot merge PanopticQuality metrics built with different category tables.")
        self._iou = [a + b for a, b in zip(self._iou, other._iou)]
        self._tp += other._tp
        self._fp += other._fp
        self._fn += other._fn
        self.num_images += other.num_images
        return self

    def add_image_stats(self, stats: ImageStats) -> None:
        """Accumulate one image's :class:`ImageStats` (from :func:`match_segments`)."""
        iou = self._iou
        for c, v in zip(stats.tp_category.tolist(), stats.tp_iou.tolist()):
            iou[c] += v
        self._tp += np.bincount(stats.tp_category, minlength=len(iou))
        self._fp += stats.fp
        self._fn += stats.fn
        self.num_images += 1

    # --------------------------------------------------------------------------------- update
    def update(self, gt: PanopticResult, pred: PanopticResult, gt_ids: torch.Tensor | Sequence[int] | None = None
               ) -> None:
        """Add one image.

        Args:
            gt: Ground truth; ``gt.iscrowd`` marks crowd segments, segment id 0 is void.
            pred: Prediction of the same ``(H, W)``; void (id 0, including ``unknown_mask``) is never an FP.
                Its ``iscrowd`` is ignored.
            gt_ids: ``(Sg,)`` original ids of the GT segments (e.g. the COCO PNG ids, in ``segments_info``
                order). Only the float summation order depends on it; give it for results bit-identical
                to panopticapi and :func:`pq_compute`.

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
        inter = intersection_matrix(gt.segment_map, sg, pred.segment_map, sp)
        for name, area in (("gt", inter[1:].sum(1)), ("pred", inter[:, 1:].sum(0))):
            if not area.all():
                raise ValueError(f"{name} has segments with no pixel ({np.nonzero(area == 0)[0][:10].tolist()}, "
                                 "0-based); call result.validate() and rebuild it with assemble_result.")
        stats = match_segments(inter, gcat, gt.iscrowd.detach().cpu().numpy(), pcat, c, order)
        self.add_image_stats(stats)

    # -------------------------------------------------------------------------------- compute
    def compute(self) -> dict[str, Any]:
        """PQ, SQ, RQ and ``n`` for ``All``, ``Things`` and ``Stuff``, plus ``per_class``.

        Returns:
            ``{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {dataset_id:
            {"pq", "sq", "rq", "tp", "fp", "fn", "iou_sum", "name", "isthing"}}, "num_images": int}``;
            ``per_class`` follows ``category_order`` and holds every category (zeros where
            ``TP + FP + FN = 0``). Values are Python floats; a row with ``n = 0`` is all 0.
        """
        cats = self.table.categories
        per_class: dict[int, dict[str, Any]] = {}
        rows: dict[str, Any] = {}
        for name, isthing in _ROWS:
            pq = sq = rq = 0.0
            n = 0
            for k in self._order:
                if isthing is not None and self._isthing[k] != isthing:
                    continue
                tp, fp, fn = int(self._tp[k]), int(self._fp[k]), int(self._fn[k])
                if tp + fp + fn == 0:
                    vals = (0.0, 0.0, 0.0)
                else:
                    vals = _pq_row(self._iou[k], tp, fp, fn)
                    n += 1
                    pq += vals[0]
                    sq += vals[1]
                    rq += vals[2]
                if isthing is None:
                    per_class[cats[k].id] = {"pq": vals[0], "sq": vals[1], "rq": vals[2], "tp": tp, "fp": fp, "fn": fn,
                                             "iou_sum": self._iou[k], "name": cats[k].name, "isthing": cats[k].isthing}
            rows[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n} if n else \
                {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        rows["per_class"] = per_class
        rows["num_images"] = self.num_images
        return rows

    def __repr__(self) -> str:
        return f"PanopticQuality(num_classes={self.table.num_classes}, num_images={self.num_images})"


def _bincount(key: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount`` of a CPU array, through torch when it runs single-threaded.

    torch's CPU bincount is ~3x faster than numpy's but runs parallel min/max reductions that stall
    badly when the cores are busy, so it is only used with one intra-op thread (the pool workers).
    """
    if torch.get_num_threads() == 1:
        kt = torch.from_numpy(key.view(np.int16) if key.dtype == np.uint16 else key)
        return torch.bincount(kt, minlength=n).numpy()
    return np.bincount(key, minlength=n)


def intersection_matrix(gt_map: torch.Tensor, num_gt: int, pred_map: torch.Tensor, num_pred: int) -> np.ndarray:
    """``(Sg + 1, Sp + 1)`` int64 pixel counts of (GT id, predicted id) from two ``(H, W)`` id maps.

    One ``bincount`` over ``gt * (Sp + 1) + pred`` (numpy on CPU, torch on other devices); ids must lie
    in ``0..S``.
    """
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"segment maps differ in shape: {tuple(gt_map.shape)} vs {tuple(pred_map.shape)}.")
    n = (num_gt + 1) * (num_pred + 1)
    bad = ValueError(f"segment ids outside 0..S ({num_gt} GT, {num_pred} predicted segments); "
                     "call result.validate() to find the broken invariant.")
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


# ---------------------------------------------------------------------------------------------------------
# File-based evaluation (COCO-panoptic JSON + PNG folders)
# ---------------------------------------------------------------------------------------------------------
class _Task(NamedTuple):
    name: str
    gt_path: str
    gt_ids: list[int]
    gt_category: list[int]
    gt_crowd: list[bool]
    gt_area: list[int] | None
    pred_path: str
    pred_ids: list[int]
    pred_category: list[int]
    num_classes: int


class _Scratch:
    """Reusable memory of one worker: the 2**24 compaction table and image-sized buffers.

    Reuse matters at 2 Mpixel: fresh 4-8 MB arrays cost page faults on every image.
    """

    def __init__(self) -> None:
        self._luts: dict[str, np.ndarray] = {}
        self._bufs: dict[str, np.ndarray] = {}

    def lut(self, dtype: type) -> np.ndarray:
        """All-zero ``(2**24,)`` table of ``dtype`` (callers re-zero the entries they set)."""
        key = np.dtype(dtype).name
        if key not in self._luts:
            self._luts[key] = np.zeros(1 << 24, dtype=dtype)
        return self._luts[key]

    def last(self, name: str) -> np.ndarray | None:
        """The buffer kept under ``name``, if any."""
        return self._bufs.get(name)

    def keep(self, name: str, arr: np.ndarray) -> None:
        """Keep ``arr`` for reuse under ``name``."""
        self._bufs[name] = arr

    def buf(self, name: str, n: int, dtype: type) -> np.ndarray:
        """An uninitialized ``(n,)`` buffer, reused across calls with the same name, size and dtype."""
        b = self._bufs.get(name)
        if b is None or b.size != n or b.dtype != np.dtype(dtype):
            b = self._bufs[name] = np.empty(n, dtype=dtype)
        return b


_WORKER_SCRATCH: _Scratch | None = None

def _codes(lut: np.ndarray, ids: np.ndarray, seg_ids: list[int], scale: int, out: np.ndarray) -> np.ndarray:
    """Compact ids into ``out``: void -> ``scale``, segment k -> ``(k + 2) * scale``, unknown id -> 0."""
    idx = np.asarray(seg_ids, dtype=np.int64)
    lut[0] = scale
    lut[idx] = (np.arange(2, len(seg_ids) + 2) * scale).astype(lut.dtype)
    try:
        # ids < 2**24 = len(lut), so "wrap" never wraps; it is the unbuffered, unchecked mode.
        return np.take(lut, ids, out=out, mode="wrap")
    finally:
        lut[0] = 0
        lut[idx] = 0


def _read_ids(path: str | os.PathLike, what: str, out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`~panoptic.png.read_png_ids` with an error that names the file and the fix."""
    try:
        return read_png_ids(path, out)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what}: cannot decode {path} ({type(e).__name__}: {e}); the PNG is corrupt or truncated, "
                         "regenerate it.") from None


def _unknown_ids_error(name: str, path: str, seg_ids: list[int]) -> ValueError:
    present = np.unique(read_png_ids(path)[0])
    missing = sorted(set(present.tolist()) - set(seg_ids) - {0})
    return ValueError(f"{name}: PNG ids {missing[:10]} are not in segments_info; add them to segments_info or set "
                      "those pixels to 0 (void).")


def _eval_task(task: _Task, scratch: _Scratch | None = None) -> tuple[ImageStats, int]:
    """Decode both PNGs once, compact each through the LUT, one bincount, then match."""
    s = scratch if scratch is not None else _worker_scratch()
    sg, sp = len(task.gt_ids), len(task.pred_ids)
    stride, rows = sp + 2, sg + 2
    total = rows * stride
    dtype = np.uint16 if total <= 32767 else np.int32 if total < 2**31 else np.int64
    lut = s.lut(dtype)
    ids, g_size = _read_ids(task.gt_path, f"{task.name} (ground truth)", s.last("ids"))
    s.keep("ids", ids)
    key = _codes(lut, ids, task.gt_ids, stride, s.buf("key", ids.size, dtype))
    ids, p_size = _read_ids(task.pred_path, f"{task.name} (prediction)", ids)
    if g_size != p_size:
        raise ValueError(_size_error(task.name, task.pred_path, p_size, g_size))
    np.add(key, _codes(lut, ids, task.pred_ids, 1, s.buf("key2", ids.size, dtype)), out=key)
    m = _bincount(key, total).reshape(rows, stride)
    if m[0].any():
        raise _unknown_ids_error(f"{task.name} (ground truth {task.gt_path})", task.gt_path, task.gt_ids)
    if m[:, 0].any():
        raise _unknown_ids_error(f"{task.name} (prediction {task.pred_path})", task.pred_path, task.pred_ids)
    m = m[1:, 1:]
    for side, path, seg_ids, area in (("ground truth", task.gt_path, task.gt_ids, m[1:].sum(1)),
                                      ("prediction", task.pred_path, task.pred_ids, m[:, 1:].sum(0))):
        if not area.all():
            absent = [seg_ids[k] for k in np.nonzero(area == 0)[0][:10].tolist()]
            raise ValueError(f"{task.name} ({side} {path}): segments_info ids {absent} have no pixel in the PNG; "
                             "remove those entries.")
    bad_area = 0
    if task.gt_area is not None:
        bad_area = int((np.asarray(task.gt_area, dtype=np.int64) != m[1:].sum(1)).sum())
    order = np.asarray(task.gt_ids, dtype=np.int64)
    return match_segments(m, np.asarray(task.gt_category), np.asarray(task.gt_crowd, dtype=bool),
                          np.asarray(task.pred_category), task.num_classes, order), bad_area


def _worker_scratch() -> _Scratch:
    global _WORKER_SCRATCH
    if _WORKER_SCRATCH is None:
        _WORKER_SCRATCH = _Scratch()
    return _WORKER_SCRATCH


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core already


def _size_error(name: str, pred_path: str, pred_hw: tuple[int, int], gt_hw: tuple[int, int]) -> str:
    return (f"{name}: prediction {pred_path} is {pred_hw[1]}x{pred_hw[0]} (WxH) but the ground truth is "
            f"{gt_hw[1]}x{gt_hw[0]}; write predictions at the ground-truth resolution (resize the id map with "
            "nearest-neighbour interpolation, never bilinear, before encoding the PNG).")


def _png_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from a PNG's IHDR without decoding; falls back to PIL for other formats."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as e:
        raise ValueError(f"{path} is not a readable image ({e}); COCO-panoptic segmentations are RGB PNGs.") from e


def _load_json(obj: str | os.PathLike | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    try:
        with open(obj) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the {what} JSON {obj}: {e}.") from e
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{what} JSON {obj} has no 'annotations' list; pass a COCO-panoptic JSON.")
    return data


def _segments(ann: Mapping[str, Any], table: CategoryTable, name: str, side: str
              ) -> tuple[list[int], list[int], list[bool], list[int] | None]:
    segs = ann.get("segments_info")
    if not isinstance(segs, list):
        raise ValueError(f"{name}: the {side} annotation has no 'segments_info' list; add one (it may be empty).")
    ids, cats, crowd, areas = [], [], [], []
    has_area = True
    for s in segs:
        if "id" not in s or "category_id" not in s:
            raise ValueError(f"{name}: {side} segment {s!r} needs 'id' and 'category_id'.")
        sid = int(s["id"])
        if not 0 < sid < 1 << 24:
            raise ValueError(f"{name}: {side} segment id {sid} is not in 1..2**24-1; 0 is VOID and PNG ids have 24 "
                             "bits, renumber the segment.")
        try:
            cats.append(table.to_contiguous(s["category_id"]))
        except ValueError as e:
            raise ValueError(f"{name}: {side} segment {sid}: {e}") from None
        ids.append(sid)
        crowd.append(bool(s.get("iscrowd", 0)))
        if "area" in s:
            areas.append(int(s["area"]))
        else:
            has_area = False
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{name}: duplicate {side} segment ids {dup[:10]} in segments_info; ids must be unique.")
    return ids, cats, crowd, (areas if has_area else None)


def _plan(gt: Mapping[str, Any], pred: Mapping[str, Any], gt_folder: Path, pred_folder: Path,
          table: CategoryTable) -> list[_Task]:
    """Validate everything that can be checked without decoding, and build one task per GT image."""
    for folder, side in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise ValueError(f"{side} folder {folder} does not exist; pass the folder holding the PNGs.")
    pred_by_id: dict[Any, Mapping[str, Any]] = {}
    for a in pred["annotations"]:
        if "image_id" not in a or "file_name" not in a:
            raise ValueError(f"prediction annotation {str(a)[:200]} needs 'image_id' and 'file_name'.")
        if a["image_id"] in pred_by_id:
            raise ValueError(f"two predictions for image_id {a['image_id']!r}; keep one annotation per image.")
        pred_by_id[a["image_id"]] = a
    gt_ids = set()
    tasks = []
    for a in gt["annotations"]:
        image_id = a["image_id"]
        if image_id in gt_ids:
            raise ValueError(f"two ground-truth annotations for image_id {image_id!r}; keep one per image.")
        gt_ids.add(image_id)
        name = f"image {image_id!r} ({a['file_name']})"
        if image_id not in pred_by_id:
            raise ValueError(f"no prediction for {name}; every ground-truth image needs a prediction annotation "
                             "(use an empty segments_info and an all-zero PNG for an image with nothing predicted).")
        p = pred_by_id[image_id]
        g_seg = _segments(a, table, name, "ground truth")
        p_seg = _segments(p, table, name, "prediction")
        tasks.append(_Task(name, str(gt_folder / a["file_name"]), g_seg[0], g_seg[1], g_seg[2], g_seg[3],
                           str(pred_folder / p["file_name"]), p_seg[0], p_seg[1], table.num_classes))
    extra = [i for i in pred_by_id if i not in gt_ids]
    if extra:
        raise ValueError(f"predictions for image ids {extra[:10]} have no ground truth; predictions must use the "
                         "ground-truth JSON's image_id values.")
    missing = [t.gt_path for t in tasks if not os.path.isfile(t.gt_path)]
    missing += [t.pred_path for t in tasks if not os.path.isfile(t.pred_path)]
    if missing:
        raise ValueError(f"{len(missing)} PNG files are missing, e.g. {missing[:3]}; check the folders and the "
                         "annotations' file_name.")
    for t in tasks:
        gs, ps = _png_size(Path(t.gt_path)), _png_size(Path(t.pred_path))
        if gs != ps:
            raise ValueError(_size_error(t.name, t.pred_path, ps, gs))
    return tasks


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> Iterator[tuple[ImageStats, int]]:
    bar = None
    if progress:
        try:
            from tqdm import tqdm
        except ImportError:  # the bar is optional
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=len(tasks), unit="img", desc="PQ", dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            scratch = _Scratch()  # dropped when the evaluation ends
            for t in tasks:
                yield _eval_task(t, scratch)
                if bar is not None:
                    bar.update()
            return
        Image.preinit()  # once here, so that forked workers inherit the plugin registry
        chunk = max(1, min(4, len(tasks) // (workers * 8)))
        with multiprocessing.get_context().Pool(workers, initializer=_worker_init) as pool:
            for out in pool.imap(_eval_task, tasks, chunksize=chunk):
                yield out
                if bar is not None:
                    bar.update()
            pool.close()
            pool.join()
    finally:
        if bar is not None:
            bar.close()


def pq_compute(gt_json: str | os.PathLike | Mapping[str, Any], pred_json: str | os.PathLike | Mapping[str, Any],
               gt_folder: str | os.PathLike | None = None, pred_folder: str | os.PathLike | None = None,
               workers: int | None = None, progress: bool = False) -> dict[str, Any]:
    """PQ of COCO-panoptic prediction files against ground-truth files (panopticapi's ``pq_compute``).

    Everything checkable without decoding is checked first (image ids, categories, segment ids, missing
    files, GT/prediction sizes); PNG ids vs ``segments_info`` are checked as each image is decoded.
    Each PNG is decoded once; ids are compacted through a 2**24 lookup table and all intersections
    come from one ``bincount``. Images run on a process pool; results are accumulated in GT order.
    PNGs are decoded by :func:`panoptic.png.read_png_ids` (libdeflate + a C scanline pass; Pillow when
    the extension is not built).

    Args:
        gt_json: Ground-truth COCO-panoptic JSON (path or loaded dict); its ``categories`` define the
            table and the class order of the means.
        pred_json: Prediction JSON (path or dict) with one annotation per GT ``image_id``.
        gt_folder: Folder of GT PNGs; default: ``gt_json`` without ``.json`` (as panopticapi).
        pred_folder: Folder of predicted PNGs; default: ``pred_json`` without ``.json``.
        workers: Processes; default ``os.cpu_count()``; ``1`` runs in this process.
        progress: Show a tqdm progress bar over images.

    Returns:
        Same dict as :meth:`PanopticQuality.compute` (``per_class`` keyed by dataset category id).

    Raises:
        ValueError: On any inconsistency, naming the image or file and the fix.
    """
    gt = _load_json(gt_json, "ground-truth")
    pred = _load_json(pred_json, "prediction")
    if "categories" not in gt:
        raise ValueError("the ground-truth JSON has no 'categories'; PQ needs them (with 'isthing').")
    gt_folder = _default_folder(gt_folder, gt_json, "gt_folder")
    pred_folder = _default_folder(pred_folder, pred_json, "pred_folder")
    table = CategoryTable.from_coco(gt["categories"])
    tasks = _plan(gt, pred, gt_folder, pred_folder, table)
    metric = PanopticQuality(table, category_order=[c["id"] for c in gt["categories"]])
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    bad_area = 0
    for stats, bad in _run_tasks(tasks, min(workers, max(1, len(tasks))), progress):
        metric.add_image_stats(stats)
        bad_area += bad
    if bad_area:
        warnings.warn(f"{bad_area} ground-truth segments have a JSON 'area' that differs from their PNG pixel count; "
                      "PQ uses the pixel counts (panopticapi would use the JSON area). Regenerate the GT JSON.",
                      stacklevel=2)
    return metric.compute()


def _default_folder(folder: str | os.PathLike | None, json_arg: Any, arg: str) -> Path:
    if folder is not None:
        return Path(folder)
    if isinstance(json_arg, Mapping):
        raise ValueError(f"pass {arg} when the JSON is given as a dict.")
    p = str(json_arg)
    return Path(p[:-5] if p.endswith(".json") else p)


def load_coco_pair(gt_png: str | os.PathLike, gt_segments_info: list[dict[str, Any]], pred_png: str | os.PathLike,
                   pred_segments_info: list[dict[str, Any]], table: CategoryTable
                   ) -> tuple[PanopticResult, PanopticResult, torch.Tensor]:
    """Decode one GT/prediction PNG pair into results for :meth:`PanopticQuality.update`.

    Returns:
        ``(gt, pred, gt_ids)``: both results (segments in ``segments_info`` order, validated by
        :func:`panoptic.formats.from_coco`) and the ``(Sg,)`` GT PNG ids to pass as ``gt_ids``, which
        makes streaming results identical to :func:`pq_compute`.
    """
    g_ids, g_size = _read_ids(gt_png, "ground truth")
    p_ids, p_size = _read_ids(pred_png, "prediction")
    if g_size != p_size:
        raise ValueError(_size_error(str(pred_png), str(pred_png), p_size, g_size))
    gt = from_coco(g_ids.reshape(g_size), gt_segments_info, table, name=str(gt_png))
    pred = from_coco(p_ids.reshape(p_size), pred_segments_info, table, name=str(pred_png))
    return gt, pred, torch.tensor([int(s["id"]) for s in gt_segments_info], dtype=torch.int64)


def format_pq_results(results: Mapping[str, Any], per_class: bool = True) -> str:
    """Markdown tables (percent) of a :func:`pq_compute` / :meth:`PanopticQuality.compute` result."""
    lines = ["|        |    PQ |    SQ |    RQ |   N |", "|--------|------:|------:|------:|----:|"]
    for name, _ in _ROWS:
        r = results[name]
        lines.append(f"| {name:6s} | {100 * r['pq']:5.1f} | {100 * r['sq']:5.1f} | {100 * r['rq']:5.1f} | "
                     f"{r['n']:3d} |")
    rows = results.get("per_class") or {}
    if per_class and rows:
        wn = max(8, *(len(str(r.get("name", ""))) for r in rows.values()))
        wi = max(2, *(len(str(c)) for c in rows))
        lines += ["", f"| {'id':>{wi}} | {'category':{wn}} | kind  |    PQ |    SQ |    RQ |    TP |    FP |    FN |",
                  f"|{'-' * (wi + 1)}:|{'-' * (wn + 2)}|-------|------:|------:|------:|------:|------:|------:|"]
        for cid, r in rows.items():
            kind = "thing" if r.get("isthing") else "stuff"
            lines.append(f"| {cid!s:>{wi}} | {r.get('name', '')!s:{wn}} | {kind} | {100 * r['pq']:5.1f} | "
                         f"{100 * r['sq']:5.1f} | {100 * r['rq']:5.1f} | {r.get('tp', '')!s:>5} | "
                         f"{r.get('fp', '')!s:>5} | {r.get('fn', '')!s:>5} |")
    return "\n".join(lines)
