"""Semantic segmentation mIoU from an accumulated confusion matrix.

Per class ``c``: ``IoU_c = TP_c / (GT_c + Pred_c - TP_c)`` where ``GT_c`` counts ground-truth pixels of
``c`` and ``Pred_c`` predicted pixels of ``c`` (both over pixels whose GT is not ``ignore_index``).

Two means are reported:

* ``miou`` (the common convention: Cityscapes scripts, mmsegmentation, torchmetrics with absent classes
  ignored): mean over classes **present in the GT or the prediction** (``GT_c + Pred_c > 0``); absent
  classes have IoU NaN in ``iou``.
* ``miou_upsnet`` (UPSNet's ``evaluate_ssegs``): ``TP / max(1, GT + Pred - TP)`` averaged over **all**
  classes, so a class absent from both counts as 0.

The two agree whenever every class occurs in the evaluated set (e.g. the full Cityscapes val set).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..constants import IGNORE_INDEX

__all__ = ["SemanticIoU"]


class SemanticIoU:
    """Confusion-matrix accumulator for semantic segmentation.

    Args:
        num_classes: ``C``; predictions and labels are ``0 .. C - 1``.
        ignore_index: GT value that is left out (e.g. 255). In the prediction, this value and negative
            values mean "no prediction": such pixels count in ``GT_c`` (a miss) but in no ``Pred_c``.
        names: Optional class names for ``per_class``.

    Example:
        >>> m = SemanticIoU(3)
        >>> m.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 1]]))
        >>> round(m.compute()["miou"], 4)
        0.6667
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 names: list[str] | tuple[str, ...] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if names is not None and len(names) != num_classes:
            raise ValueError(f"names has {len(names)} entries for {num_classes} classes.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(num_classes))
        self.reset()

    def reset(self) -> None:
        """Zero the confusion matrix."""
        # Row = GT class, column = predicted class; the extra column counts "no prediction".
        self.confusion = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Add a prediction/label pair.

        Args:
            pred: ``(H, W)`` (or any shape, e.g. ``(B, H, W)``) integer predicted classes.
            gt: Same shape, integer GT classes, ``ignore_index`` where unlabeled.

        Raises:
            ValueError: On a shape mismatch or values outside ``0 .. C - 1`` (other than ignore values).
        """
        p = torch.as_tensor(pred)
        g = torch.as_tensor(gt, device=p.device)
        if p.shape != g.shape:
            raise ValueError(f"pred shape {tuple(p.shape)} differs from gt shape {tuple(g.shape)}; resize the "
                             "prediction to the label size with nearest-neighbour interpolation first.")
        if p.is_floating_point() or g.is_floating_point():
            raise ValueError("pred and gt must be integer class maps; take logits.argmax(dim) first.")
        c = self.num_classes
        p, g = p.reshape(-1).long(), g.reshape(-1).long()
        keep = g != self.ignore_index
        p, g = p[keep], g[keep]
        if g.numel() and (g.min() < 0 or g.max() >= c):
            bad = g[(g < 0) | (g >= c)].unique()[:5].tolist()
            raise ValueError(f"gt has values {bad} outside 0..{c - 1} and not ignore_index={self.ignore_index}; "
                             "map unlabeled pixels to ignore_index.")
        none = (p < 0) | (p == self.ignore_index)
        if p.numel() and bool(((p >= c) & ~none).any()):
            bad = p[(p >= c) & ~none].unique()[:5].tolist()
            raise ValueError(f"pred has values {bad} outside 0..{c - 1}; predictions must be class indices "
                             f"(or ignore_index={self.ignore_index} / negative for no prediction).")
        p = torch.where(none, torch.full_like(p, c), p)
        counts = torch.bincount(g * (c + 1) + p, minlength=c * (c + 1))
        self.confusion += counts.reshape(c, c + 1).cpu()

    def merge(self, other: SemanticIoU) -> SemanticIoU:
        """Add ``other``'s confusion matrix (in place); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge SemanticIoU metrics with different num_classes.")
        self.confusion += other.confusion
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"confusion": (C, C + 1) int64}``; sum it over processes and load it to merge."""
        return {"confusion": self.confusion.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the confusion matrix."""
        conf = state["confusion"]
        if tuple(conf.shape) != (self.num_classes, self.num_classes + 1):
            raise ValueError(f"confusion must be ({self.num_classes}, {self.num_classes + 1}), "
                             f"got {tuple(conf.shape)}.")
        self.confusion = conf.to(torch.int64).cpu().clone()

    def compute(self) -> dict[str, Any]:
        """IoUs and means.

        Returns:
            ``iou`` ``(C,)`` float64 (NaN for classes absent from GT and prediction), ``miou`` (mean over
            present classes; 0.0 if none), ``iou_upsnet`` ``(C,)`` and ``miou_upsnet`` (UPSNet: absent
            classes count as 0), ``present`` ``(C,)`` bool, ``pixel_acc``, ``per_class`` (name -> IoU)
            and ``confusion`` ``(C, C)`` (GT rows, predicted columns; missed pixels left out).
        """
        conf = self.confusion.double()
        tp = conf.diagonal()
        gt_c = conf.sum(1)
        pred_c = conf[:, : self.num_classes].sum(0)
        union = gt_c + pred_c - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        iou_upsnet = tp / union.clamp(min=1)
        total = float(gt_c.sum())
        return {
            "iou": iou,
            "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
            "iou_upsnet": iou_upsnet,
            "miou_upsnet": float(iou_upsnet.mean()),
            "present": present,
            "pixel_acc": float(tp.sum()) / total if total else 0.0,
            "per_class": {n: float(v) for n, v in zip(self.names, iou.tolist())},
            "confusion": self.confusion[:, : self.num_classes].clone(),
        }

    def __repr__(self) -> str:
        return f"SemanticIoU(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
