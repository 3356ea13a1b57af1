"""detectron2: Panoptic FPN outputs in, ``(panoptic_seg, segments_info)`` out.

What detectron2 produces (``detectron2/modeling/meta_arch/panoptic_fpn.py``, ``structures/instances.py``):

* ``instances`` (an ``Instances``): ``pred_boxes`` (``Boxes``, ``.tensor`` ``(N, 4)`` xyxy), ``scores`` ``(N,)``,
  ``pred_classes`` ``(N,)`` *contiguous thing ids* (``thing_dataset_id_to_contiguous_id``), and ``pred_masks``:
  after ``detector_postprocess`` (what ``model(inputs)`` returns) ``(N, H, W)`` bool full-image masks; the raw
  ROI head output (``model.inference(..., do_postprocess=False)``) ``(N, 1, M, M)`` mask probabilities.
* ``sem_seg`` ``(S + 1, H, W)`` logits: channel 0 is the merged "things" class, channel ``j >= 1`` the stuff
  class with ``stuff_dataset_id_to_contiguous_id[id] == j``.
* ``panoptic_seg``: ``(H, W)`` int32 segment ids (0 = void) and ``segments_info``: things
  ``{id, isthing: True, score, category_id (contiguous thing id), instance_id}``, stuff
  ``{id, isthing: False, category_id (stuff channel), area}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..categories import CategoryTable
from ..formats import from_coco
from ..structures import Instances, PanopticResult
from .common import FusionInputs, expand_things_channel, map_labels, read, read_optional, tensor, thing_lut

__all__ = ["Detectron2Metadata", "from_detectron2", "from_detectron2_panoptic", "to_detectron2"]

_FIX = ("Pass the dataset's metadata (MetadataCatalog.get(name), or a dict with thing_dataset_id_to_contiguous_id "
        "and stuff_dataset_id_to_contiguous_id) as metadata=, and a category table with the same categories.")


@dataclass(frozen=True)
class Detectron2Metadata:
    """The two id maps of a detectron2 Panoptic FPN dataset ("separated" panoptic metadata).

    Attributes:
        thing_dataset_id_to_contiguous_id: Dataset id -> ``pred_classes`` value (``0 .. T - 1``).
        stuff_dataset_id_to_contiguous_id: Dataset id -> semantic channel (``1 .. S``; 0 is the merged
            "things" channel, whose entry ``0: 0``, if present, is skipped).
    """

    thing_dataset_id_to_contiguous_id: Mapping[int, int]
    stuff_dataset_id_to_contiguous_id: Mapping[int, int]

    @staticmethod
    def from_table(table: CategoryTable) -> Detectron2Metadata:
        """detectron2's builtin convention on ``table``: things ``0 .. T - 1`` and stuff ``1 .. S`` in table order.

        For COCO this equals detectron2's ``coco_2017_*_panoptic_separated`` metadata when the table is built
        from the COCO-panoptic ``categories`` list (both follow the list's order).
        """
        things = [c.id for c in table.categories if c.isthing]
        stuff = [c.id for c in table.categories if not c.isthing]
        return Detectron2Metadata({d: k for k, d in enumerate(things)}, {d: k + 1 for k, d in enumerate(stuff)})

    @staticmethod
    def coerce(metadata: Any, table: CategoryTable) -> Detectron2Metadata:
        """``metadata`` as a :class:`Detectron2Metadata`: ``None`` -> :meth:`from_table`; detectron2's ``Metadata``
        or a dict -> its two maps."""
        if metadata is None:
            return Detectron2Metadata.from_table(table)
        if isinstance(metadata, Detectron2Metadata):
            return metadata
        what = "detectron2 metadata"
        return Detectron2Metadata(dict(read(metadata, "thing_dataset_id_to_contiguous_id", what)),
                                  dict(read(metadata, "stuff_dataset_id_to_contiguous_id", what)))

    def thing_lut(self, table: CategoryTable) -> torch.Tensor:
        """``(T,)`` int64: ``pred_classes`` value -> thing index of ``table`` (-1: unmapped)."""
        contiguous = list(self.thing_dataset_id_to_contiguous_id.values())
        if len(set(contiguous)) != len(contiguous):
            raise ValueError("thing_dataset_id_to_contiguous_id maps two dataset ids to one contiguous id. " + _FIX)
        return thing_lut({v: k for k, v in self.thing_dataset_id_to_contiguous_id.items()}, table, "detectron2",
                         _FIX)

    def stuff_channels(self, table: CategoryTable) -> list[int]:
        """For each stuff category of ``table`` (table order), its channel in detectron2's ``sem_seg``."""
        stuff = {int(d): int(c) for d, c in self.stuff_dataset_id_to_contiguous_id.items() if int(c) != 0}
        zero = [d for d, c in self.stuff_dataset_id_to_contiguous_id.items() if int(c) == 0 and int(d) != 0]
        if zero:
            raise ValueError(f"stuff_dataset_id_to_contiguous_id maps dataset ids {zero} to 0, the merged things "
                             "channel of Panoptic FPN; stuff channels are 1..S. " + _FIX)
        table_stuff = [c.id for c in table.categories if not c.isthing]
        if sorted(stuff) != sorted(table_stuff) or sorted(stuff.values()) != list(range(1, len(table_stuff) + 1)):
            raise ValueError(f"stuff_dataset_id_to_contiguous_id (dataset ids {sorted(stuff)}, channels "
                             f"{sorted(stuff.values())}) must map the table's {len(table_stuff)} stuff ids "
                             f"{sorted(table_stuff)} to channels 1..{len(table_stuff)}. " + _FIX)
        return [stuff[d] for d in table_stuff]

    def stuff_dataset_ids(self) -> dict[int, int]:
        """Semantic channel (``1 .. S``) -> dataset id."""
        return {int(c): int(d) for d, c in self.stuff_dataset_id_to_contiguous_id.items() if int(c) != 0}


def from_detectron2(instances: Any, table: CategoryTable, *, sem_seg: torch.Tensor | None = None,
                    metadata: Any = None,
                    semantic_layout: Literal["detectron2", "stuff_first"] = "detectron2") -> FusionInputs:
    """One image's Panoptic FPN output as fusion inputs.

    ``out = model([{"image": ...}])[0]`` gives ``out["instances"]`` and ``out["sem_seg"]``; then::

        inputs = from_detectron2(out["instances"], table, sem_seg=out["sem_seg"], metadata=meta)
        HeuristicFusion(table, flavor="detectron2", semantic_layout="detectron2")(
            inputs.semantic_logits[None], [inputs.instances])

    Masks: ``(N, H, W)`` bool ``pred_masks`` become binary full-image masks (``mask_space="image"``, the
    fusion's output size is the masks' size), float ones full-image probabilities, ``(N, 1, M, M)`` ones ROI
    probabilities in their ``pred_boxes`` (``mask_space="roi"``). Binary masks carry no logit, so
    ``UPSNetFusion`` refuses them: give it the raw ROI output (``do_postprocess=False``).

    Args:
        instances: detectron2 ``Instances`` (or any object/dict with ``pred_boxes``, ``scores``,
            ``pred_classes``, ``pred_masks``).
        table: Category table of the dataset.
        sem_seg: ``(S + 1, H, W)`` float logits in detectron2's layout (channel 0: all things), or ``None``.
        metadata: detectron2 dataset metadata (``MetadataCatalog.get(name)``), a dict with the two id maps, a
            :class:`Detectron2Metadata`, or ``None`` for :meth:`Detectron2Metadata.from_table`.
        semantic_layout: ``"detectron2"``: the ``(S + 1, H, W)`` logits as detectron2 gives them (stuff channels
            reordered to the table's stuff order only if the metadata orders them differently), for
            ``HeuristicFusion(..., semantic_layout="detectron2")``, which reproduces detectron2's rule exactly;
            ``"stuff_first"``: expanded to ``(C, H, W)`` with :func:`~panoptic.interop.expand_things_channel`
            (any fusion; for ``UPSNetFusion`` an approximation, see there).

    Returns:
        :class:`~panoptic.interop.FusionInputs`.

    Raises:
        ValueError: A missing field, a mask shape none of the above, or a class the metadata/table cannot map.
    """
    what = "detectron2 Instances"
    meta = Detectron2Metadata.coerce(metadata, table)
    boxes = tensor(read(instances, "pred_boxes", what), "pred_boxes").float()
    scores = tensor(read(instances, "scores", what), "scores").float()
    classes = tensor(read(instances, "pred_classes", what), "pred_classes")
    masks = read_optional(instances, "pred_masks")
    if masks is None:
        raise ValueError("detectron2 Instances has no 'pred_masks' (a detection-only model?); panoptic fusion "
                         "needs instance masks: use a Mask R-CNN / Panoptic FPN model.")
    masks = tensor(masks, "pred_masks")
    labels = map_labels(classes, meta.thing_lut(table), "detectron2 pred_classes", _FIX).to(boxes.device)
    if masks.ndim == 4 and masks.shape[1] == 1:
        inst = Instances(boxes, scores, labels, masks[:, 0].float(), "roi", "probabilities")
    elif masks.ndim == 3:
        kind = "probabilities" if masks.is_floating_point() else "binary"
        inst = Instances(boxes, scores, labels, masks, "image", kind)
    else:
        raise ValueError(f"detectron2 pred_masks must be (N, H, W) full-image masks or (N, 1, M, M) ROI "
                         f"probabilities, got {tuple(masks.shape)}.")
    return FusionInputs(None if sem_seg is None else _semantic(sem_seg, table, meta, semantic_layout), inst)


def _semantic(sem_seg: torch.Tensor, table: CategoryTable, meta: Detectron2Metadata, layout: str) -> torch.Tensor:
    """detectron2's ``(S + 1, H, W)`` logits in ``layout`` (see :func:`from_detectron2`)."""
    sem = tensor(sem_seg, "sem_seg")
    ns = table.num_stuff
    if sem.ndim != 3 or sem.shape[0] != ns + 1 or not sem.is_floating_point():
        raise ValueError(f"detectron2 sem_seg must be (S + 1, H, W) float logits with S = {ns} stuff classes "
                         f"(channel 0: things), got {tuple(sem.shape)} {sem.dtype}; pass output['sem_seg'] of one "
                         "image (not its argmax).")
    stuff = meta.stuff_channels(table)
    if layout == "stuff_first":
        return expand_things_channel(sem, table, things_channel=0, stuff_channels=stuff)
    if layout != "detectron2":
        raise ValueError(f"semantic_layout must be 'detectron2' or 'stuff_first', got {layout!r}.")
    if stuff == list(range(1, ns + 1)):
        return sem  # handed through untouched
    return sem.index_select(0, torch.tensor([0, *stuff], device=sem.device))


def to_detectron2(result: PanopticResult, table: CategoryTable,
                  metadata: Any = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(panoptic_seg, segments_info)`` exactly as detectron2's Panoptic FPN returns them.

    Segment ids are the result's (``1..S`` in segment order, 0 = void, unknown pixels void). Things:
    ``{"id", "isthing": True, "score", "category_id": contiguous thing id, "instance_id": index in the fusion's
    input}``; stuff: ``{"id", "isthing": False, "category_id": stuff channel (1..S), "area"}``.
    detectron2's ``COCOPanopticEvaluator`` reads this with the same metadata.

    Args:
        result: One image's result.
        table: Its category table.
        metadata: As in :func:`from_detectron2`.

    Returns:
        ``(H, W)`` int32 ``panoptic_seg`` (a new tensor) and the ``segments_info`` list.
    """
    meta = Detectron2Metadata.coerce(metadata, table)
    thing_id = {int(d): int(c) for d, c in meta.thing_dataset_id_to_contiguous_id.items()}
    stuff_id = {d: c for c, d in meta.stuff_dataset_ids().items()}
    ids = table.dataset_ids
    info = []
    rows = zip(result.category.tolist(), result.isthing.tolist(), result.score.tolist(), result.area.tolist(),
               result.source.tolist(), strict=True)
    for k, (cat, isthing, score, area, source) in enumerate(rows):
        d = ids[cat]
        mapping = thing_id if isthing else stuff_id
        if d not in mapping:
            raise ValueError(f"segment {k + 1}: dataset id {d} is not in the metadata's "
                             f"{'thing' if isthing else 'stuff'}_dataset_id_to_contiguous_id. " + _FIX)
        if isthing:
            info.append({"id": k + 1, "isthing": True, "score": score, "category_id": mapping[d],
                         "instance_id": source})
        else:
            info.append({"id": k + 1, "isthing": False, "category_id": mapping[d], "area": area})
    return result.segment_map.to(torch.int32, copy=True), info


def from_detectron2_panoptic(panoptic_seg: torch.Tensor, segments_info: list[dict[str, Any]], table: CategoryTable,
                             metadata: Any = None) -> PanopticResult:
    """Read detectron2's ``(panoptic_seg, segments_info)`` back (e.g. to score it with this library's PQ).

    ``category_id`` is read as detectron2's evaluator reads it: a contiguous thing id if ``isthing`` is true, a
    stuff channel if false, and a dataset id if ``isthing`` is absent (models that predict panoptic ids directly).

    Args:
        panoptic_seg: ``(H, W)`` int segment ids, 0 = void.
        segments_info: detectron2's list of dicts.
        table: Category table.
        metadata: As in :func:`from_detectron2`.

    Returns:
        Segments in ``segments_info`` order (scores kept, NaN for stuff), renumbered ``1..S``.
    """
    meta = Detectron2Metadata.coerce(metadata, table)
    thing_ds = {int(c): int(d) for d, c in meta.thing_dataset_id_to_contiguous_id.items()}
    stuff_ds = meta.stuff_dataset_ids()
    info = []
    for s in segments_info:
        isthing = s.get("isthing")
        cat = int(s["category_id"])
        if isthing is not None:
            mapping = thing_ds if isthing else stuff_ds
            if cat not in mapping:
                raise ValueError(f"segment {s['id']}: {'thing' if isthing else 'stuff'} category_id {cat} is not in "
                                 "the metadata. " + _FIX)
            cat = mapping[cat]
        info.append({"id": int(s["id"]), "category_id": cat, "score": s.get("score", float("nan")),
                     "source": s.get("instance_id", -1)})
    seg = tensor(panoptic_seg, "panoptic_seg")
    return from_coco(seg.cpu().numpy(), info, table, name="detectron2 panoptic_seg")
