"""COCO-panoptic files (JSON + PNG folders) in, :class:`~panoptic.evaluation.streaming.PanopticQuality` out.

This module reads and checks files and runs the images on a process pool; every rule lives in
:mod:`panoptic.evaluation.streaming`. Differences from panopticapi, all on malformed input: inconsistent
PNG/``segments_info`` ids are errors on both sides (panopticapi ignores GT PNG ids missing from the JSON
and counts JSON-only GT segments as FN); GT areas are the pixel counts (panopticapi trusts the JSON
``area``; a warning tells when the two differ); a prediction without ground truth is an error
(panopticapi ignores it); a PNG that is not 8-bit RGB/RGBA is an error (panopticapi reads a greyscale PNG
as ids ``v * 65793``).
"""

# Over 500 lines: one job (files in, checked, PanopticQuality out); splitting it would scatter the file checks.

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..categories import CategoryTable
from ..errors import PanopticError
from ..formats import from_coco
from ..png import PNG_SIGNATURE, decoder_name, read_png_ids
from ..structures import PanopticResult
from ._boundary import add_boundary, band_width

try:
    from . import _native
except ImportError:  # no C compiler at install time: the numpy path below runs instead
    _native = None
from .streaming import ImageRecord, MetricConfig, PanopticQuality, _bincount, image_record

__all__ = ["pq_compute"]


class PngFormatError(PanopticError, ValueError):
    """A segmentation PNG that is not an RGB-encoded COCO-panoptic PNG."""


class EmptyEvaluationError(PanopticError, ValueError):
    """No category has a GT segment or a prediction: every metric would be 0 / 0."""


class _Task(NamedTuple):
    index: int
    name: str
    gt_path: str
    gt_ids: list[int]
    gt_category: list[int]
    gt_crowd: list[bool]
    gt_area: list[int] | None
    pred_path: str
    pred_ids: list[int]
    pred_category: list[int]
    isthing: np.ndarray
    config: MetricConfig


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


_WORKER_SCRATCH = threading.local()


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
        _check_png_format(Path(path), what)
    except OSError:
        pass  # missing or unreadable: read_png_ids below names it
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


def _add_band(ids: np.ndarray, key: np.ndarray, hw: tuple[int, int], d: int, value: int, void_too: bool) -> None:
    k = key.view(np.int16) if key.dtype == np.uint16 else key  # values stay below 2**15
    add_boundary(ids.reshape(hw), k, d, value, void_too)


def _eval_task(task: _Task, scratch: _Scratch | None = None) -> tuple[int, ImageRecord, int]:
    """Decode both PNGs once, count (GT, prediction) pixel pairs, then every metric's statistics.

    With Boundary PQ each (GT, prediction) cell is split 2 x 2 by band membership in the same count.
    """
    s = scratch if scratch is not None else _worker_scratch()
    if _native is not None:
        m, g_size = _pair_counts_native(task, s)
    else:
        m, g_size = _pair_counts_numpy(task, s)
    bands = "boundary_pq" in task.config.metrics
    if m[0].any():
        raise _unknown_ids_error(f"{task.name} (ground truth {task.gt_path})", task.gt_path, task.gt_ids)
    if m[:, :, 0].any():
        raise _unknown_ids_error(f"{task.name} (prediction {task.pred_path})", task.pred_path, task.pred_ids)
    m = m[1:, :, 1:, :]
    inter = m.sum((1, 3))
    for side, path, seg_ids, area in (("ground truth", task.gt_path, task.gt_ids, inter[1:].sum(1)),
                                      ("prediction", task.pred_path, task.pred_ids, inter[:, 1:].sum(0))):
        if not area.all():
            absent = [seg_ids[k] for k in np.nonzero(area == 0)[0][:10].tolist()]
            raise ValueError(f"{task.name} ({side} {path}): segments_info ids {absent} have no pixel in the PNG; "
                             "remove those entries.")
    bad_area = 0
    if task.gt_area is not None:
        bad_area = int((np.asarray(task.gt_area, dtype=np.int64) != inter[1:].sum(1)).sum())
    order = np.asarray(task.gt_ids, dtype=np.int64)
    record = image_record(m if bands else inter, np.asarray(task.gt_category), np.asarray(task.gt_crowd, dtype=bool),
                          np.asarray(task.pred_category), task.isthing, task.config, order, g_size[0] * g_size[1])
    return task.index, record, bad_area


def _pair_counts_numpy(task: _Task, s: _Scratch) -> tuple[np.ndarray, tuple[int, int]]:
    """``(Sg + 2, k, Sp + 2, k)`` pair counts (codes: 0 unknown id, 1 void, segment i + 2; ``k = 2`` splits by
    band membership for Boundary PQ, else 1): LUT compaction with ``np.take`` and one ``bincount``."""
    sg, sp = len(task.gt_ids), len(task.pred_ids)
    bands = "boundary_pq" in task.config.metrics
    split = 2 if bands else 1
    stride, rows = (sp + 2) * split, (sg + 2) * split
    total = rows * stride
    dtype = np.uint16 if total <= 32767 else np.int32 if total < 2**31 else np.int64
    lut = s.lut(dtype)
    ids, g_size = _read_ids(task.gt_path, f"{task.name} (ground truth)", s.last("ids"))
    s.keep("ids", ids)
    key = _codes(lut, ids, task.gt_ids, stride * split, s.buf("key", ids.size, dtype))
    d = band_width(*g_size, task.config.boundary_ratio) if bands else 0
    if bands:
        _add_band(ids, key, g_size, d, stride, void_too=True)
    ids, p_size = _read_ids(task.pred_path, f"{task.name} (prediction)", ids)
    if g_size != p_size:
        raise ValueError(_size_error(task.name, task.pred_path, p_size, g_size))
    key2 = _codes(lut, ids, task.pred_ids, split, s.buf("key2", ids.size, dtype))
    if bands:
        _add_band(ids, key2, p_size, d, 1, void_too=False)
    np.add(key, key2, out=key)
    return _bincount(key, total).reshape(sg + 2, split, sp + 2, split), g_size


def _sorted_codes(seg_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(seg_ids, dtype=np.uint32)
    order = np.argsort(ids, kind="stable")
    return np.ascontiguousarray(ids[order]), (order + 2).astype(np.int64)


def _pair_counts_native(task: _Task, s: _Scratch) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`_pair_counts_numpy` in one C pass over both id maps (same counts)."""
    sg, sp = len(task.gt_ids), len(task.pred_ids)
    bands = "boundary_pq" in task.config.metrics
    split = 2 if bands else 1
    g_ids, g_size = _read_ids(task.gt_path, f"{task.name} (ground truth)", s.last("ids"))
    s.keep("ids", g_ids)
    p_ids, p_size = _read_ids(task.pred_path, f"{task.name} (prediction)", s.last("ids2"))
    s.keep("ids2", p_ids)
    if g_size != p_size:
        raise ValueError(_size_error(task.name, task.pred_path, p_size, g_size))
    empty = np.zeros(0, dtype=np.uint8)
    g_band = p_band = empty
    if bands:
        d = band_width(*g_size, task.config.boundary_ratio)
        g_band = s.buf("gband", g_ids.size, np.uint8)
        p_band = s.buf("pband", p_ids.size, np.uint8)
        _native.band_mask(g_ids, g_band, g_size[0], g_size[1], d)
        _native.band_mask(p_ids, p_band, p_size[0], p_size[1], d)
    hist = np.zeros((sg + 2) * split * (sp + 2) * split, dtype=np.int64)
    _native.pair_counts(g_ids, p_ids, *_sorted_codes(task.gt_ids), *_sorted_codes(task.pred_ids), hist, g_band,
                        p_band)
    return hist.reshape(sg + 2, split, sp + 2, split), g_size


def _worker_scratch() -> _Scratch:
    scratch = getattr(_WORKER_SCRATCH, "scratch", None)
    if scratch is None:
        scratch = _WORKER_SCRATCH.scratch = _Scratch()
    return scratch


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core already


def _size_error(name: str, pred_path: str, pred_hw: tuple[int, int], gt_hw: tuple[int, int]) -> str:
    return (f"{name}: prediction {pred_path} is {pred_hw[1]}x{pred_hw[0]} (WxH) but the ground truth is "
            f"{gt_hw[1]}x{gt_hw[0]}; write predictions at the ground-truth resolution (resize the id map with "
            "nearest-neighbour interpolation, never bilinear, before encoding the PNG).")


_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale + alpha", 6: "RGBA"}


def _png_format_error(path: Path, what: str, found: str) -> PngFormatError:
    return PngFormatError(
        f"{what}: {path} is {found}, not an RGB-encoded COCO-panoptic PNG (8-bit RGB or RGBA, segment id = "
        "R + 256 G + 65536 B); re-encode the id map with panoptic.formats.id2rgb (or panopticapi's id2rgb) and "
        "save it as a PNG, e.g. Image.fromarray(id2rgb(ids)).save(path).")


def _check_png_format(path: Path, what: str) -> None:
    """8-bit RGB/RGBA PNG from its IHDR, without decoding; other files name the problem and the fix."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR" or len(head) < 26:
        kind = "a JPEG file" if head[:3] == b"\xff\xd8\xff" else "not a PNG file"
        try:
            with Image.open(path) as im:
                kind = f"a {im.format} image" if im.format else kind
        except OSError:
            pass
        raise _png_format_error(path, what, kind)
    depth, color = head[24], head[25]
    if color not in (2, 6) or depth != 8:
        raise _png_format_error(path, what, f"a {depth}-bit {_COLOR_TYPES.get(color, f'colour type {color}')} PNG")


def _png_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from a PNG's IHDR without decoding (the format is checked by :func:`_check_png_format`)."""
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


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
          table: CategoryTable, config: MetricConfig, shard: tuple[int, int]) -> list[_Task]:
    """Validate everything that can be checked without decoding, and build one task per GT image of the shard."""
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
    isthing = np.array([c.isthing for c in table.categories], dtype=bool)
    gt_ids = set()
    tasks = []
    for index, a in enumerate(gt["annotations"]):
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
        if index % shard[1] == shard[0]:
            tasks.append(_Task(index, name, str(gt_folder / a["file_name"]), g_seg[0], g_seg[1], g_seg[2], g_seg[3],
                               str(pred_folder / p["file_name"]), p_seg[0], p_seg[1], isthing, config))
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
        _check_png_format(Path(t.gt_path), f"{t.name} (ground truth)")
        _check_png_format(Path(t.pred_path), f"{t.name} (prediction)")
        gs, ps = _png_size(Path(t.gt_path)), _png_size(Path(t.pred_path))
        if gs != ps:
            raise ValueError(_size_error(t.name, t.pred_path, ps, gs))
    return tasks


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> Iterator[tuple[int, ImageRecord, int]]:
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
        # The native decoder and pair counter release the GIL for all but ~1 ms of an image: threads then
        # avoid a process pool's start-up; otherwise (numpy paths) processes.
        if _native is not None and decoder_name().startswith("native"):
            pool_ctx = multiprocessing.pool.ThreadPool(workers)
        else:
            pool_ctx = multiprocessing.get_context().Pool(workers, initializer=_worker_init)
        with pool_ctx as pool:
            for out in pool.imap(_eval_task, tasks, chunksize=chunk):
                yield out
                if bar is not None:
                    bar.update()
            pool.close()
            pool.join()
    finally:
        if bar is not None:
            bar.close()


def gt_fingerprint(gt: Mapping[str, Any]) -> str:
    """SHA-256 of what fixes the image order and the categories of a GT JSON (shards must share it)."""
    h = hashlib.sha256()
    h.update(json.dumps([[a.get("image_id"), a.get("file_name")] for a in gt["annotations"]]).encode())
    h.update(json.dumps(gt.get("categories"), sort_keys=True).encode())
    return h.hexdigest()


def evaluate_files(gt_json: str | os.PathLike | Mapping[str, Any], pred_json: str | os.PathLike | Mapping[str, Any],
                   gt_folder: str | os.PathLike | None = None, pred_folder: str | os.PathLike | None = None,
                   workers: int | None = None, progress: bool = False, *, config: MetricConfig | None = None,
                   shard: tuple[int, int] = (0, 1)) -> tuple[PanopticQuality, dict[str, Any]]:
    """Evaluate COCO-panoptic files into a :class:`PanopticQuality` (keys = GT JSON positions).

    Args:
        gt_json: As in :func:`pq_compute`.
        pred_json: As in :func:`pq_compute`.
        gt_folder: As in :func:`pq_compute`.
        pred_folder: As in :func:`pq_compute`.
        workers: As in :func:`pq_compute`.
        progress: As in :func:`pq_compute`.
        config: Which metrics; default PQ only.
        shard: ``(i, n)``: evaluate the images at positions ``p`` of the GT JSON with ``p % n == i``.

    Returns:
        The metric, and ``{"num_total": images in the GT JSON, "fingerprint": gt_fingerprint(gt),
        "shard": [i, n]}``.
    """
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}; e.g. --shard 0/4 ... --shard 3/4.")
    config = config or MetricConfig()
    gt = _load_json(gt_json, "ground-truth")
    pred = _load_json(pred_json, "prediction")
    if "categories" not in gt:
        raise ValueError("the ground-truth JSON has no 'categories'; PQ needs them (with 'isthing').")
    gt_folder = _default_folder(gt_folder, gt_json, "gt_folder")
    pred_folder = _default_folder(pred_folder, pred_json, "pred_folder")
    table = CategoryTable.from_coco(gt["categories"])
    tasks = _plan(gt, pred, gt_folder, pred_folder, table, config, (i, n))
    metric = PanopticQuality(table, category_order=[c["id"] for c in gt["categories"]], config=config)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    bad_area = 0
    for index, record, bad in _run_tasks(tasks, min(workers, max(1, len(tasks))), progress):
        metric.add_record(record, key=index)
        bad_area += bad
    if bad_area:
        warnings.warn(f"{bad_area} ground-truth segments have a JSON 'area' that differs from their PNG pixel count; "
                      "PQ uses the pixel counts (panopticapi would use the JSON area). Regenerate the GT JSON.",
                      stacklevel=2)
    return metric, {"num_total": len(gt["annotations"]), "fingerprint": gt_fingerprint(gt), "shard": [i, n]}


def check_not_empty(results: Mapping[str, Any], allow_empty: bool) -> None:
    """Raise :class:`EmptyEvaluationError` when no category has a GT segment or a prediction."""
    if not allow_empty and results["All"]["n"] == 0:
        raise EmptyEvaluationError(
            f"nothing to evaluate: the {results.get('num_images', 0)} images have no non-crowd ground-truth segment "
            "and no predicted segment, so PQ is 0 / 0 (panopticapi raises ZeroDivisionError). Check that the right "
            "folders were passed; pass allow_empty=True (--allow-empty) to accept PQ = 0 with n = 0.")


def pq_compute(gt_json: str | os.PathLike | Mapping[str, Any], pred_json: str | os.PathLike | Mapping[str, Any],
               gt_folder: str | os.PathLike | None = None, pred_folder: str | os.PathLike | None = None,
               workers: int | None = None, progress: bool = False, *, config: MetricConfig | None = None,
               allow_empty: bool = False) -> dict[str, Any]:
    """PQ (and more metrics on request) of COCO-panoptic prediction files against ground-truth files.

    panopticapi's ``pq_compute``, bit-identical to its single-process run. Everything checkable without
    decoding is checked first (image ids, categories, segment ids, missing files, PNG formats,
    GT/prediction sizes); PNG ids vs ``segments_info`` are checked as each image is decoded. Each PNG is
    decoded once; ids are compacted through a 2**24 lookup table and all intersections come from one
    ``bincount`` (split by boundary-band membership for Boundary PQ). Images run on a pool of threads
    (native decoder and C passes, which release the GIL) or processes; results are accumulated in GT order.
    PNGs are decoded by :func:`panoptic.png.read_png_ids`.

    Args:
        gt_json: Ground-truth COCO-panoptic JSON (path or loaded dict); its ``categories`` define the
            table and the class order of the means.
        pred_json: Prediction JSON (path or dict) with one annotation per GT ``image_id``.
        gt_folder: Folder of GT PNGs; default: ``gt_json`` without ``.json`` (as panopticapi).
        pred_folder: Folder of predicted PNGs; default: ``pred_json`` without ``.json``.
        workers: Processes; default ``os.cpu_count()``; ``1`` runs in this process.
        progress: Show a tqdm progress bar over images.
        config: Which metrics (:class:`~panoptic.evaluation.streaming.MetricConfig`); default PQ only.
        allow_empty: Return zeros (``n = 0``) when no category has a GT segment or a prediction instead
            of raising :class:`EmptyEvaluationError`.

    Returns:
        Same dict as :meth:`PanopticQuality.compute` (``per_class`` keyed by dataset category id).

    Raises:
        ValueError: On any inconsistency, naming the image or file and the fix (:class:`PngFormatError`
            for a PNG that is not RGB-encoded, :class:`EmptyEvaluationError` for nothing to evaluate).
    """
    metric, _ = evaluate_files(gt_json, pred_json, gt_folder, pred_folder, workers, progress, config=config)
    results = metric.compute()
    check_not_empty(results, allow_empty)
    return results


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
