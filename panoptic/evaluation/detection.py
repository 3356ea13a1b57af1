"""COCO box and mask AP of :class:`~panoptic.Instances` through pycocotools (``COCOeval``), silently.

Predicted masks are binarized at logit ``> 0`` (probability ``> 0.5``). ROI mask logits are pasted into
the image with the shared :mod:`panoptic.fusion.paste` geometry (the one the fusions use); full-image
logits of another size are resized bilinearly first. Boxes are ``x1, y1, x2, y2`` in pixels and become
COCO ``[x, y, x2 - x1, y2 - y1]``. GT ``area`` (used by COCO's small/medium/large ranges) is the mask
area when masks are given, else the box area.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..fusion.paste import box_regions, paste_masks
from ..structures import mask_foreground

if TYPE_CHECKING:
    from ..categories import CategoryTable
    from ..structures import Instances

__all__ = ["DetectionAP"]

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _encode(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().double().cpu()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


class DetectionAP:
    """Accumulate detections and ground truth per image; :meth:`compute` runs ``COCOeval``.

    Args:
        table: Category table; ``labels`` (predicted and GT) are thing indices ``0 .. num_things - 1``.
        iou_types: Any of ``"bbox"`` and ``"segm"``.
        max_dets: Detections kept per image (highest scores), as COCO's 100.

    Example:
        >>> import torch
        >>> from panoptic import Instances
        >>> from panoptic.data import synthetic_categories
        >>> ap = DetectionAP(synthetic_categories())
        >>> masks = torch.zeros(1, 32, 32, dtype=torch.bool)
        >>> masks[0, 4:20, 6:24] = True
        >>> boxes, labels = torch.tensor([[6.0, 4.0, 24.0, 20.0]]), torch.tensor([0])
        >>> found = Instances(boxes, torch.tensor([0.9]), labels, torch.where(masks, 10.0, -10.0), mask_space="image")
        >>> ap.update(found, boxes, labels, masks)  # one image: a perfect detection
        >>> round(ap.compute()["AP_mask"], 3)
        1.0
    """

    def __init__(self, table: CategoryTable, iou_types: Sequence[str] = ("bbox", "segm"), max_dets: int = 100) -> None:
        bad = set(iou_types) - {"bbox", "segm"}
        if bad:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {sorted(bad)}.")
        if table.num_things == 0:
            raise ValueError("the category table has no thing categories; detection AP needs some.")
        self.table = table
        self.iou_types = tuple(iou_types)
        self.max_dets = max_dets
        self._cat_ids = [table.to_dataset(table.thing_to_contiguous(t)) for t in range(table.num_things)]
        self.reset()

    def reset(self) -> None:
        """Forget every image."""
        self._images: list[dict[str, Any]] = []
        self._gt: list[dict[str, Any]] = []
        self._dt_box: list[dict[str, Any]] = []
        self._dt_segm: list[dict[str, Any]] = []
        self._has_masks = True

    def _cat(self, labels: torch.Tensor, what: str) -> list[int]:
        lab = labels.detach().long().cpu()
        if lab.numel() and (lab.min() < 0 or lab.max() >= len(self._cat_ids)):
            raise ValueError(f"{what} labels must be thing indices 0..{len(self._cat_ids) - 1} (contiguous id minus "
                             f"num_stuff), got [{int(lab.min())}, {int(lab.max())}].")
        return [self._cat_ids[i] for i in lab.tolist()]

    def update(self, pred: Instances, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
               gt_masks: torch.Tensor | None = None, gt_iscrowd: torch.Tensor | None = None,
               image_size: tuple[int, int] | None = None) -> None:
        """Add one image.

        Args:
            pred: Detections (boxes xyxy, scores, thing-index labels, mask logits in ``"roi"`` or
                ``"image"`` space) in the GT frame.
            gt_boxes: ``(N, 4)`` float xyxy.
            gt_labels: ``(N,)`` int64 thing indices.
            gt_masks: ``(N, H, W)`` bool masks, or ``None`` for box-only ground truth (no mask AP).
            gt_iscrowd: ``(N,)`` bool; default all ``False``.
            image_size: ``(H, W)``; required when ``gt_masks`` is ``None``.
        """
        size = self._check_gt(gt_boxes, gt_labels, gt_masks, image_size)
        n = int(gt_boxes.shape[0])
        crowd = torch.zeros(n, dtype=torch.bool) if gt_iscrowd is None else gt_iscrowd.detach().bool().cpu()
        if crowd.shape != (n,):
            raise ValueError(f"gt_iscrowd must be ({n},), got {tuple(crowd.shape)}.")
        pred.validate(len(self._cat_ids))
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "height": size[0], "width": size[1]})
        self._add_ground_truth(image_id, gt_boxes, gt_labels, gt_masks, crowd)
        if len(pred):
            self._add_detections(image_id, pred, size)

    def _check_gt(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_masks: torch.Tensor | None,
                  image_size: tuple[int, int] | None) -> tuple[int, int]:
        """The image's ``(H, W)`` after checking the ground-truth shapes; box-only GT turns mask AP off."""
        n = int(gt_boxes.shape[0])
        if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
            raise ValueError(f"gt_boxes must be (N, 4) xyxy, got {tuple(gt_boxes.shape)}.")
        if gt_labels.shape != (n,):
            raise ValueError(f"gt_labels must be ({n},), got {tuple(gt_labels.shape)}.")
        if gt_masks is not None:
            if gt_masks.ndim != 3 or gt_masks.shape[0] != n:
                raise ValueError(f"gt_masks must be ({n}, H, W), got {tuple(gt_masks.shape)}.")
            size = (int(gt_masks.shape[1]), int(gt_masks.shape[2]))
            if image_size is not None and tuple(image_size) != size:
                raise ValueError(f"image_size {tuple(image_size)} differs from the gt_masks size {size}.")
            return size
        if image_size is None:
            raise ValueError("pass image_size=(H, W) when gt_masks is None.")
        self._has_masks = False
        return (int(image_size[0]), int(image_size[1]))

    def _add_ground_truth(self, image_id: int, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                          gt_masks: torch.Tensor | None, crowd: torch.Tensor) -> None:
        """One COCO annotation per ground-truth object (RLE mask and mask area, or the box area)."""
        boxes = _xywh(gt_boxes)
        cats = self._cat(gt_labels, "gt")
        masks = gt_masks.detach().bool().cpu().numpy() if gt_masks is not None else None
        for i in range(int(gt_boxes.shape[0])):
            ann: dict[str, Any] = {"id": len(self._gt) + 1, "image_id": image_id, "category_id": cats[i],
                                   "bbox": boxes[i], "iscrowd": int(crowd[i])}
            if masks is not None:
                ann["segmentation"] = _encode(masks[i])
                ann["area"] = float(masks[i].sum())
            else:
                ann["area"] = float(boxes[i][2] * boxes[i][3])
            self._gt.append(ann)

    def _add_detections(self, image_id: int, pred: Instances, size: tuple[int, int]) -> None:
        """The ``max_dets`` best-scored detections as COCO results (boxes, and RLE masks for ``"segm"``)."""
        keep = torch.argsort(pred.scores.detach().cpu(), descending=True, stable=True)[: self.max_dets]
        pred = pred.to("cpu")[keep]
        scores = pred.scores.double().tolist()
        pboxes = _xywh(pred.boxes)
        pcats = self._cat(pred.labels, "predicted")
        for i in range(len(pred)):
            self._dt_box.append({"image_id": image_id, "category_id": pcats[i], "bbox": pboxes[i], "score": scores[i]})
        if "segm" in self.iou_types:
            for i, m in enumerate(self._binary_masks(pred, size)):
                self._dt_segm.append({"image_id": image_id, "category_id": pcats[i], "segmentation": _encode(m),
                                      "score": scores[i]})

    @staticmethod
    def _binary_masks(pred: Instances, size: tuple[int, int]) -> list[np.ndarray]:
        """``N`` ``(H, W)`` bool masks: probability ``> 0.5`` (logit ``> 0``), whatever ``pred.mask_kind``."""
        h, w = size
        logits = pred.mask_logits.detach().float()
        kind = pred.mask_kind
        if pred.mask_space == "image":
            if tuple(logits.shape[1:]) != (h, w):
                logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            return list(mask_foreground(logits, kind, strict=True).numpy())
        regions = box_regions(pred.boxes, (h, w))
        out = []
        for loc, (y0, y1, x0, x1) in zip(paste_masks(logits, regions), regions.paste):
            m = np.zeros((h, w), dtype=bool)
            if y1 > y0 and x1 > x0:
                m[y0:y1, x0:x1] = mask_foreground(loc, kind, strict=True).numpy()
            out.append(m)
        return out

    def compute(self) -> dict[str, Any]:
        """Run ``COCOeval``.

        Returns:
            ``{"AP_box", "AP50_box", "AP75_box", "APs_box", "APm_box", "APl_box", "AR1_box", "AR10_box",
            "AR100_box", "ARs_box", "ARm_box", "ARl_box"}`` and the same with ``_mask``, as fractions
            (COCO AP@[.5:.95] is ``AP_*``), plus ``per_class_box`` / ``per_class_mask`` (category name ->
            AP). NaN where COCO reports -1 (nothing to evaluate, e.g. no GT of that area range) and for
            mask keys when some image had no GT masks; 0.0 when there are GT objects but no detections.
        """
        out: dict[str, Any] = {}
        for iou_type, suffix in (("bbox", "box"), ("segm", "mask")):
            if iou_type not in self.iou_types:
                continue
            if iou_type == "segm" and not self._has_masks:
                out.update({f"{k}_{suffix}": math.nan for k in _STAT_NAMES})
                out[f"per_class_{suffix}"] = {}
                continue
            stats, per_class = self._evaluate(iou_type)
            out.update({f"{k}_{suffix}": v for k, v in zip(_STAT_NAMES, stats)})
            out[f"per_class_{suffix}"] = per_class
        return out

    def _evaluate(self, iou_type: str) -> tuple[list[float], dict[str, float]]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        names = {self.table.to_dataset(self.table.thing_to_contiguous(t)): self.table.categories[
            self.table.thing_to_contiguous(t)].name for t in range(self.table.num_things)}
        dets = self._dt_box if iou_type == "bbox" else self._dt_segm
        has_gt = any(not a["iscrowd"] for a in self._gt)
        if not dets:
            v = 0.0 if has_gt else math.nan
            return [v] * len(_STAT_NAMES), {names[c]: (0.0 if any(a["category_id"] == c and not a["iscrowd"]
                                                                   for a in self._gt) else math.nan)
                                            for c in self._cat_ids}
        gt_anns = self._gt
        if iou_type == "bbox":
            gt_anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in self._gt]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = {"images": self._images, "annotations": gt_anns,
                               "categories": [{"id": c, "name": names[c]} for c in self._cat_ids]}
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes([dict(d) for d in dets])
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.maxDets = [1, 10, self.max_dets]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = [float(s) if s >= 0 else math.nan for s in ev.stats.tolist()]
        # precision: (T, R, K, A, M); area "all" and the largest maxDets.
        prec = ev.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for k, cid in enumerate(ev.params.catIds):
            p = prec[:, :, k]
            p = p[p > -1]
            per_class[names[cid]] = float(p.mean()) if p.size else math.nan
        return stats, per_class

    def __repr__(self) -> str:
        return f"DetectionAP(images={len(self._images)}, iou_types={self.iou_types})"
