"""mmdetection 3.x: ``DetDataSample`` predictions in, ``pan_results`` out.

What mmdetection 3.x produces (``mmdet/models/seg_heads/panoptic_fusion_heads/heuristic_fusion_head.py``,
``mmdet/evaluation/metrics/coco_panoptic_metric.py``, ``mmdet/structures/det_data_sample.py``):

* ``pred_instances`` (``InstanceData``): ``bboxes`` ``(N, 4)`` xyxy, ``scores``, ``labels`` (class index into
  ``dataset_meta["classes"]``, things first), ``masks`` ``(N, H, W)`` bool full-image masks (after the mask
  head's ``mask_thr_binary``).
* Panoptic FPN's semantic head (``PanopticFPNHead``): ``(S + 1, H, W)`` logits, stuff classes first (in
  ``classes`` order) and one merged "things" channel **last**.
* ``pred_panoptic_seg.sem_seg`` ``(1, H, W)``: ``pan = label + instance_id * INSTANCE_OFFSET``
  (``INSTANCE_OFFSET = 1000``): things ``instance_id = 1, 2, ...`` over the image in paste order, stuff
  ``instance_id = 0``, void ``label = num_classes`` (``len(classes)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..categories import CategoryTable
from ..formats import from_coco
from ..structures import Instances, PanopticResult
from .common import FusionInputs, expand_things_channel, map_labels, read, read_optional, tensor, thing_lut

__all__ = [
    "MMDetClasses",
    "from_mmdet",
    "from_mmdet_panoptic",
    "to_mmdet",
]

#: mmdetection's ``mmdet.evaluation.functional.INSTANCE_OFFSET`` (3.x).
INSTANCE_OFFSET = 1000

_FIX = ("Pass the model's classes (dataset_meta['classes'], things first) as classes=, and a category table with "
        "the same categories (and names).")


@dataclass(frozen=True)
class MMDetClasses:
    """mmdetection's label space: label ``k`` is dataset id ``label_to_dataset_id[k]``, things first.

    Attributes:
        label_to_dataset_id: Dataset id of each label, the ``T`` thing classes then the ``S`` stuff classes.
        num_things: ``T``.
    """

    label_to_dataset_id: tuple[int, ...]
    num_things: int

    @property
    def num_classes(self) -> int:
        """``len(classes)``; also mmdet's void label in ``pan_results``."""
        return len(self.label_to_dataset_id)

    @staticmethod
    def from_table(table: CategoryTable) -> MMDetClasses:
        """mmdet's convention on ``table``: its things in table order, then its stuff in table order (for COCO,
        mmdet's ``CocoPanopticDataset.METAINFO`` when the table is built from the COCO-panoptic categories)."""
        things = [c.id for c in table.categories if c.isthing]
        stuff = [c.id for c in table.categories if not c.isthing]
        return MMDetClasses(tuple(things + stuff), len(things))

    @staticmethod
    def coerce(classes: Any, table: CategoryTable) -> MMDetClasses:
        """``classes`` as :class:`MMDetClasses`.

        Args:
            classes: ``None`` (:meth:`from_table`); an :class:`MMDetClasses`; a ``dataset_meta`` mapping with
                ``"classes"``; or a sequence of class names (matched to the table's names) or dataset ids.
            table: Category table.
        """
        if classes is None:
            return MMDetClasses.from_table(table)
        if isinstance(classes, MMDetClasses):
            return classes
        if isinstance(classes, Mapping):
            classes = classes.get("classes", classes.get("CLASSES"))
            if classes is None:
                raise ValueError("mmdet dataset_meta has no 'classes'. " + _FIX)
        classes = list(classes)
        if all(isinstance(c, str) for c in classes):
            by_name = {c.name: c.id for c in table.categories}
            if len(by_name) != table.num_classes:
                raise ValueError("the category table has duplicate names; pass classes as dataset ids instead.")
            unknown = [c for c in classes if c not in by_name]
            if unknown:
                raise ValueError(f"mmdet classes {unknown[:10]} are not names in the category table. " + _FIX)
            ids = [by_name[c] for c in classes]
        else:
            ids = [int(c) for c in classes]
        if sorted(ids) != sorted(table.dataset_ids):
            raise ValueError(f"mmdet classes (dataset ids {sorted(ids)}) must be the table's categories "
                             f"{sorted(table.dataset_ids)}, each once. " + _FIX)
        isthing = [table.isthing(table.to_contiguous(d)) for d in ids]
        nt = sum(isthing)
        if not all(isthing[:nt]):
            raise ValueError("mmdet classes must list the thing classes first, then the stuff classes (mmdet's "
                             "panoptic heads assume it). " + _FIX)
        return MMDetClasses(tuple(ids), nt)

    def stuff_channels(self, table: CategoryTable) -> list[int]:
        """For each stuff category of ``table`` (table order), its stuff index ``label - num_things``."""
        index = {d: k - self.num_things for k, d in enumerate(self.label_to_dataset_id) if k >= self.num_things}
        return [index[c.id] for c in table.categories if not c.isthing]


def from_mmdet(sample: Any, table: CategoryTable, *, sem_seg: torch.Tensor | None = None,
               classes: Any = None) -> FusionInputs:
    """One image's mmdetection prediction as fusion inputs.

    Args:
        sample: A ``DetDataSample`` (its ``pred_instances``, and ``pred_sem_seg.sem_seg`` if present and
            ``sem_seg`` is not given) or the ``InstanceData`` itself; any object or dict with ``bboxes``,
            ``scores``, ``labels``, ``masks`` will do.
        table: Category table.
        sem_seg: Semantic logits: ``(S + 1, H, W)`` from Panoptic FPN's head (stuff first, merged things channel
            last), expanded with :func:`~panoptic.interop.expand_things_channel`; or ``(C, H, W)`` with one
            channel per class in mmdet's label order, reordered to the table's. ``None``: none.
        classes: mmdet's classes, see :meth:`MMDetClasses.coerce`.

    Returns:
        :class:`~panoptic.interop.FusionInputs`; the logits, if any, are ``(C, H, W)`` stuff first. For
        ``HeuristicFusion`` the expansion decides every pixel as mmdet does (a tie between the things channel
        and a stuff channel goes to stuff in both); for ``UPSNetFusion`` it is an approximation (see
        :func:`~panoptic.interop.expand_things_channel`). Bool masks become binary full-image masks (UPSNet
        needs probabilities or logits: keep the mask head's probabilities, e.g. ``rescale`` with
        ``mask_thr_binary=-1``, which gives float masks).
    """
    cls = MMDetClasses.coerce(classes, table)
    pred = read_optional(sample, "pred_instances")
    what = "mmdet pred_instances"
    if pred is None:
        pred, what = sample, "mmdet InstanceData"
    boxes = tensor(read(pred, "bboxes", what), "bboxes").float()
    scores = tensor(read(pred, "scores", what), "scores").float()
    raw = tensor(read(pred, "labels", what), "labels")
    masks = read_optional(pred, "masks")
    if masks is None:
        raise ValueError("mmdet pred_instances has no 'masks' (a detection-only model?); panoptic fusion needs "
                         "instance masks: use a Mask R-CNN / Panoptic FPN model.")
    masks = tensor(masks, "masks")
    lut = thing_lut(dict(enumerate(cls.label_to_dataset_id[:cls.num_things])), table, "mmdet", _FIX)
    labels = map_labels(raw, lut, "mmdet", _FIX).to(boxes.device)
    if masks.ndim != 3:
        raise ValueError(f"mmdet masks must be (N, H, W) full-image masks, got {tuple(masks.shape)}.")
    kind = "probabilities" if masks.is_floating_point() else "binary"
    inst = Instances(boxes, scores, labels, masks, "image", kind)
    if sem_seg is None:
        pixel = read_optional(sample, "pred_sem_seg")
        sem_seg = None if pixel is None else read(pixel, "sem_seg", "mmdet pred_sem_seg")
    return FusionInputs(None if sem_seg is None else _semantic(tensor(sem_seg, "sem_seg"), table, cls), inst)


def _semantic(sem: torch.Tensor, table: CategoryTable, cls: MMDetClasses) -> torch.Tensor:
    """mmdet semantic logits (merged-things or all-class layout) as ``(C, H, W)`` stuff-first logits."""
    ns, nt = table.num_stuff, table.num_things
    if sem.ndim != 3 or not sem.is_floating_point() or sem.shape[0] not in (ns + 1, ns + nt):
        raise ValueError(f"mmdet semantic logits must be float (S + 1, H, W) = ({ns + 1}, H, W) (Panoptic FPN: stuff, "
                         f"then all things) or (C, H, W) = ({ns + nt}, H, W), got {tuple(sem.shape)} {sem.dtype}; "
                         "pass the semantic head's logits (model.semantic_head.predict), not a label map.")
    stuff = cls.stuff_channels(table)
    if sem.shape[0] == ns + 1:
        return expand_things_channel(sem, table, things_channel=ns, stuff_channels=stuff)
    label_of = {d: k for k, d in enumerate(cls.label_to_dataset_id)}
    order = [label_of[c.id] for c in table.categories]
    return sem.index_select(0, torch.tensor(order, device=sem.device))


def to_mmdet(result: PanopticResult, table: CategoryTable, classes: Any = None) -> torch.Tensor:
    """mmdetection 3.x's ``pan_results``: ``label + instance_id * INSTANCE_OFFSET``, void ``num_classes``.

    Things get ``instance_id = 1, 2, ...`` in segment order (for the fusions' results: paste order, as mmdet
    numbers them), stuff ``instance_id = 0``; void and unknown pixels get ``num_classes``. mmdet keeps it as
    ``DetDataSample.pred_panoptic_seg.sem_seg = pan_results[None]``.

    Args:
        result: One image's result.
        table: Its category table.
        classes: See :meth:`MMDetClasses.coerce`.

    Returns:
        ``(H, W)`` int32.
    """
    cls = MMDetClasses.coerce(classes, table)
    label_of = {d: k for k, d in enumerate(cls.label_to_dataset_id)}
    dev = result.segment_map.device
    label = torch.tensor([label_of[d] for d in table.dataset_ids], dtype=torch.int64, device=dev)[result.category]
    instance = torch.cumsum(result.isthing.long(), 0) * result.isthing.long()
    code = torch.cat([torch.tensor([cls.num_classes], device=dev), label + instance * INSTANCE_OFFSET])
    return code[result.segment_map.long()].to(torch.int32)


def from_mmdet_panoptic(pan_results: torch.Tensor, table: CategoryTable, classes: Any = None) -> PanopticResult:
    """Read mmdetection's ``pan_results`` back, segment by segment as mmdet's ``CocoPanopticMetric`` does.

    Every distinct value but void (``value % INSTANCE_OFFSET == num_classes``) is one segment of category
    ``classes[value % INSTANCE_OFFSET]``, in ascending value order. Scores are NaN (the encoding has none).

    Args:
        pan_results: ``(H, W)`` or ``(1, H, W)`` int (``pred_panoptic_seg.sem_seg``).
        table: Category table.
        classes: See :meth:`MMDetClasses.coerce`.
    """
    cls = MMDetClasses.coerce(classes, table)
    pan = tensor(pan_results, "pan_results")
    if pan.ndim == 3 and pan.shape[0] == 1:
        pan = pan[0]
    if pan.ndim != 2 or pan.is_floating_point():
        raise ValueError(f"mmdet pan_results must be an (H, W) or (1, H, W) int map, got {tuple(pan.shape)} "
                         f"{pan.dtype}.")
    pan = pan.long().cpu()
    if bool((pan < 0).any()):
        raise ValueError("mmdet pan_results has negative values; expected label + instance * INSTANCE_OFFSET.")
    labels = pan % INSTANCE_OFFSET
    if bool((labels > cls.num_classes).any()):
        raise ValueError(f"mmdet pan_results has labels above num_classes = {cls.num_classes} (void); the classes "
                         "do not match this prediction. " + _FIX)
    void = labels == cls.num_classes
    ids = torch.where(void, 0, pan + 1)  # + 1: value 0 is a valid segment in mmdet, void in from_coco
    values = torch.unique(ids)
    values = values[values > 0].tolist()
    info = [{"id": v, "category_id": cls.label_to_dataset_id[(v - 1) % INSTANCE_OFFSET]} for v in values]
    return from_coco(ids.numpy().astype(np.int64), info, table, name="mmdet pan_results")


