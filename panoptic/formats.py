"""Lossless bridges between :class:`PanopticResult` and the label encodings used in the wild.

| encoding | map content | void |
|---|---|---|
| COCO-panoptic (panopticapi) | RGB PNG, ``id = R + 256 G + 256^2 B`` + ``segments_info`` | 0 |
| label divisor (detectron2 Panoptic-DeepLab, Cityscapes) | ``category * label_divisor + instance`` | ``void`` (-1) |
| pairs (torchmetrics) | ``(H, W, 2)`` = (category, instance) | category ``void`` (-1) |

In the label-divisor and pair forms, stuff and crowd segments have instance 0 and non-crowd things
are numbered ``1, 2, ...`` per category in segment order (so at most one stuff or crowd segment per
category can be exported; more raise a ``ValueError``). Those forms carry no score or source, so an
import gives NaN scores and source -1; the partition, categories, crowd flags and areas round-trip
exactly. Unknown pixels are void unless an ``unknown`` code is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .segments import assemble_result
from .structures import PanopticResult

if TYPE_CHECKING:
    from .categories import CategoryTable

__all__ = [
    "from_coco",
    "from_label_divisor",
    "from_pairs",
    "id2rgb",
    "rgb2id",
    "to_coco",
    "to_label_divisor",
    "to_pairs",
]


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 COCO-panoptic PNG -> ``(H, W)`` uint32 ids (``R + 256 G + 65536 B``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}; open PNGs with .convert('RGB').")
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``(H, W)`` ids ``< 2**24`` -> ``(H, W, 3)`` uint8 RGB."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("COCO-panoptic ids must be in 0 .. 2**24 - 1.")
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def segment_bboxes(segment_map: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``(S, 4)`` int64 COCO boxes ``[x, y, w, h]`` (inclusive pixel extent) of segments ``1..S``."""
    h, w = segment_map.shape
    flat = segment_map.reshape(-1).long()
    ys = torch.arange(h, device=flat.device).repeat_interleave(w)
    xs = torch.arange(w, device=flat.device).repeat(h)
    big = h + w + 1
    out = []
    for coord in (xs, ys):
        mn = torch.full((num_segments + 1,), big, dtype=torch.int64, device=flat.device)
        mx = torch.full((num_segments + 1,), -1, dtype=torch.int64, device=flat.device)
        mn.scatter_reduce_(0, flat, coord, "amin")
        mx.scatter_reduce_(0, flat, coord, "amax")
        out.append((mn[1:], mx[1:]))
    (x0, x1), (y0, y1) = out
    return torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)


def to_coco(result: PanopticResult, table: CategoryTable) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """COCO-panoptic export: PNG array with id ``k`` for segment ``k`` and matching ``segments_info``.

    Ids are the segment ids themselves (deterministic, unlike panopticapi's random ``IdGenerator``).
    Each entry holds ``id``, ``category_id`` (dataset id), ``iscrowd``, ``area``, ``bbox``
    (``[x, y, w, h]``, inclusive pixel extent), ``isthing``, ``source`` and, when not NaN, ``score``;
    panopticapi ignores the extra keys.

    Returns:
        ``(H, W, 3)`` uint8 RGB array and the ``segments_info`` list.
    """
    sm = result.segment_map.cpu()
    s = result.num_segments
    bboxes = segment_bboxes(sm, s).tolist()
    ds = table.dataset_ids
    info = []
    for k, (cat, thing, score, area, src, crowd) in enumerate(zip(
            result.category.tolist(), result.isthing.tolist(), result.score.tolist(), result.area.tolist(),
            result.source.tolist(), result.iscrowd.tolist())):
        entry: dict[str, Any] = {"id": k + 1, "category_id": ds[cat], "iscrowd": int(crowd), "area": int(area),
                                 "bbox": bboxes[k], "isthing": bool(thing), "source": int(src)}
        if not np.isnan(score):
            entry["score"] = float(score)
        info.append(entry)
    return id2rgb(sm.numpy()), info


def from_coco(png: np.ndarray, segments_info: list[dict[str, Any]], table: CategoryTable,
              name: str = "panoptic PNG") -> PanopticResult:
    """COCO-panoptic import, validated as panopticapi does but before any long work starts.

    Args:
        png: ``(H, W, 3)`` uint8 RGB array, or an ``(H, W)`` array of ids already decoded.
        segments_info: The image's ``segments_info`` list (``id``, ``category_id``, optional ``iscrowd``,
            ``score``, ``source``).
        table: Category table mapping ``category_id`` to contiguous ids.
        name: Used in error messages (e.g. the file name).

    Returns:
        Segments in ``segments_info`` order, renumbered ``1..S``.

    Raises:
        ValueError: A ``segments_info`` entry without ``id`` or ``category_id``, a PNG id missing from
            ``segments_info``, a ``segments_info`` id with no pixel, a duplicated id, or an unknown category.
    """
    ids = rgb2id(png) if png.ndim == 3 else np.asarray(png).astype(np.int64)
    for k, s in enumerate(segments_info):
        if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
            raise ValueError(f"{name}: segments_info[{k}] = {s!r} needs 'id' and 'category_id'.")
    seg_ids = [int(s["id"]) for s in segments_info]
    if len(set(seg_ids)) != len(seg_ids):
        raise ValueError(f"{name}: duplicate segment ids in segments_info; each segment needs a unique id.")
    if 0 in seg_ids:
        raise ValueError(f"{name}: segment id 0 is VOID in COCO-panoptic; renumber that segment (ids start at 1).")
    present, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    known = set(seg_ids)
    missing = [int(v) for v in present if v != 0 and int(v) not in known]
    if missing:
        raise ValueError(f"{name}: PNG ids {missing[:10]} are not in segments_info; add them to segments_info or "
                         "set those pixels to 0 (void).")
    absent = sorted(known - {int(v) for v in present})
    if absent:
        raise ValueError(f"{name}: segments_info ids {absent[:10]} have no pixel in the PNG; remove those entries.")
    row_of = {sid: k for k, sid in enumerate(seg_ids)}
    lut = np.array([row_of.get(int(v), -1) for v in present], dtype=np.int64)
    labels = torch.from_numpy(lut[inverse].reshape(ids.shape))
    cats = []
    for s in segments_info:
        try:
            cats.append(table.to_contiguous(s["category_id"]))
        except ValueError as e:
            raise ValueError(f"{name}: segment {s['id']}: {e}") from None
    cat_t = torch.tensor(cats, dtype=torch.int64)
    return assemble_result(
        labels, cat_t, table.isthing_tensor()[cat_t],
        torch.tensor([float(s.get("score", float("nan"))) for s in segments_info], dtype=torch.float32),
        torch.tensor([int(s.get("source", -1)) for s in segments_info], dtype=torch.int64),
        iscrowd=torch.tensor([bool(s.get("iscrowd", 0)) for s in segments_info], dtype=torch.bool))


def _instance_numbers(result: PanopticResult) -> torch.Tensor:
    """``(S,)`` instance number per segment: 0 for stuff/crowd, 1.. per category for other things."""
    numbered = (result.isthing & ~result.iscrowd).cpu()
    unnumbered = result.category[~numbered.to(result.category.device)].tolist()
    if len(set(unnumbered)) != len(unnumbered):
        raise ValueError("two stuff or crowd segments share a category; the (category, instance) forms give both "
                         "instance 0, so they would merge. Export with to_coco, or merge them first.")
    counters: dict[int, int] = {}
    out = []
    for cat, num in zip(result.category.tolist(), numbered.tolist()):
        if num:
            counters[cat] = counters.get(cat, 0) + 1
            out.append(counters[cat])
        else:
            out.append(0)
    return torch.tensor(out, dtype=torch.int64, device=result.category.device)


def to_pairs(result: PanopticResult, void: int = -1, unknown: int | None = None,
             table: CategoryTable | None = None) -> torch.Tensor:
    """``(H, W, 2)`` int64 map of (category, instance).

    Args:
        result: The result to export.
        void: Category code for void pixels (instance 0).
        unknown: Category code for predicted-unknown pixels; ``None`` writes them as void.
        table: If given, categories are dataset ids; otherwise contiguous ids.
    """
    cats = result.category
    if table is not None:
        cats = table.dataset_id_tensor(cats.device)[cats]
    dev = result.segment_map.device
    cat_lut = torch.cat([torch.tensor([void], device=dev), cats.to(dev)])
    ins_lut = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), _instance_numbers(result).to(dev)])
    sm = result.segment_map.long()
    cat_map, ins_map = cat_lut[sm], ins_lut[sm]
    if unknown is not None:
        cat_map = torch.where(result.unknown_mask, torch.tensor(unknown, device=dev), cat_map)
    return torch.stack([cat_map, ins_map], dim=-1)


def to_label_divisor(result: PanopticResult, label_divisor: int = 1000, void: int = -1, unknown: int | None = None,
                     table: CategoryTable | None = None) -> torch.Tensor:
    """``(H, W)`` int64 map ``category * label_divisor + instance`` (detectron2 / Cityscapes order).

    Raises:
        ValueError: If ``label_divisor`` is not a positive integer, or an instance number reaches it (ids would
            collide).
    """
    _check_label_divisor(label_divisor)
    pairs = to_pairs(result, void=void, unknown=unknown, table=table)
    if pairs[..., 1].numel() and int(pairs[..., 1].max()) >= label_divisor:
        raise ValueError(f"an instance id reaches label_divisor={label_divisor}; use a larger label_divisor.")
    special = pairs[..., 0] < 0
    enc = pairs[..., 0] * label_divisor + pairs[..., 1]
    return torch.where(special, pairs[..., 0], enc)


def from_pairs(pairs: torch.Tensor, table: CategoryTable, void: int = -1, unknown: int | None = None,
               dataset_ids: bool = False) -> PanopticResult:
    """Import ``(H, W, 2)`` (category, instance) pairs; the inverse of :func:`to_pairs`.

    Segments are ordered by (category, instance). Things with instance 0 are crowd segments.

    Raises:
        ValueError: On an unknown category, a stuff pixel with a non-zero instance, a negative instance, or float
            pairs that are not whole numbers.
    """
    if pairs.ndim != 3 or pairs.shape[-1] != 2:
        raise ValueError(f"pairs must be (H, W, 2), got {tuple(pairs.shape)}.")
    _check_integers(pairs, "pairs")
    cat, ins = pairs[..., 0].long(), pairs[..., 1].long()
    unknown_mask = cat == unknown if unknown is not None else torch.zeros_like(cat, dtype=torch.bool)
    void_mask = (cat == void) | unknown_mask
    negative = (ins < 0) & ~void_mask
    if negative.any():
        raise ValueError(f"instance ids must be >= 0 (0 for stuff and crowd), got {ins[negative].unique().tolist()[:5]}"
                         "; set void/unknown to the category codes of the pixels they mark.")
    keys = torch.where(void_mask, torch.full_like(cat, -1), cat * (int(ins.max()) + 1 if ins.numel() else 1) + ins)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    has_void = bool(uniq.numel()) and int(uniq[0]) == -1
    seg_keys = uniq[1:] if has_void else uniq
    labels = inverse - 1 if has_void else inverse
    div = int(ins.max()) + 1 if ins.numel() else 1
    seg_cat, seg_ins = seg_keys // div, seg_keys % div
    if dataset_ids:
        seg_cat = torch.tensor([table.to_contiguous(int(c)) for c in seg_cat.tolist()], dtype=torch.int64)
    elif seg_cat.numel() and (seg_cat.min() < 0 or seg_cat.max() >= table.num_classes):
        bad = seg_cat[(seg_cat < 0) | (seg_cat >= table.num_classes)].unique().tolist()
        raise ValueError(f"categories {bad} are not contiguous ids of the table (0..{table.num_classes - 1}); "
                         "pass dataset_ids=True if the map holds dataset ids, or set void/unknown.")
    isthing = table.isthing_tensor()[seg_cat]
    if ((~isthing) & (seg_ins != 0)).any():
        raise ValueError("a stuff category has a non-zero instance id; stuff pixels must have instance 0.")
    s = seg_cat.numel()
    return assemble_result(labels.reshape(cat.shape), seg_cat, isthing, torch.full((s,), float("nan")),
                           torch.full((s,), -1, dtype=torch.int64), iscrowd=isthing & (seg_ins == 0),
                           unknown_mask=unknown_mask)


def from_label_divisor(panoptic: torch.Tensor, table: CategoryTable, label_divisor: int = 1000, void: int = -1,
                       unknown: int | None = None, dataset_ids: bool = False) -> PanopticResult:
    """Import a ``category * label_divisor + instance`` map; the inverse of :func:`to_label_divisor`.

    Values below 0 are only allowed for ``void``/``unknown``; a float map must hold whole numbers.

    Raises:
        ValueError: As :func:`from_pairs`, and for a ``label_divisor`` that is not a positive integer.
    """
    if panoptic.ndim != 2:
        raise ValueError(f"a label-divisor map must be (H, W), got {tuple(panoptic.shape)}.")
    _check_label_divisor(label_divisor)
    _check_integers(panoptic, "a label-divisor map")
    p = panoptic.long()
    special = p < 0
    bad = special & (p != void) & ((p != unknown) if unknown is not None else torch.ones_like(special))
    if bad.any():
        raise ValueError(f"negative values {p[bad].unique().tolist()[:5]} other than void={void}; "
                         "set void/unknown to the codes the map uses.")
    cat = torch.where(special, p, p // label_divisor)
    ins = torch.where(special, torch.zeros_like(p), p % label_divisor)
    return from_pairs(torch.stack([cat, ins], -1), table, void=void, unknown=unknown, dataset_ids=dataset_ids)


def _check_label_divisor(label_divisor: int) -> None:
    """``ValueError`` unless ``label_divisor`` is a positive integer."""
    if isinstance(label_divisor, bool) or not isinstance(label_divisor, int | np.integer) or label_divisor < 1:
        raise ValueError(f"label_divisor must be a positive integer (detectron2 and Cityscapes use 1000), got "
                         f"{label_divisor!r}.")


def _check_integers(x: torch.Tensor, what: str) -> None:
    """``ValueError`` if a floating-point ``x`` holds a value that is not a whole number (or NaN / inf)."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all() and torch.equal(x, x.round())):
        raise ValueError(f"{what} must hold integer ids; got values that are not whole numbers (a float map of "
                         "logits or scores?).")
