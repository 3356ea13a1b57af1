"""Query-based fusion: MaskFormer / Mask2Former / OneFormer and Hugging Face transformers' post-processing.

The rule (Mask2Former ``panoptic_inference``): softmax the class logits; keep a query whose best class is not
"no object" with score ``> object_mask_threshold``; each pixel goes to the kept query with the largest
``score * sigmoid(mask)``; a query keeps its segment if its argmax area over its own foreground area
(``sigmoid >= mask_threshold``) passes ``overlap_threshold``; stuff queries of one category merge. The flavours
differ in what is painted and how the overlap ratio compares (see ``docs/fusion-strategies.md``). ``"kmax"`` is
deeplab2's pixelwise rule for kMaX-DeepLab (:meth:`MaskFormerFusion.fuse_kmax`), ``"kmax_maskwise"`` its maskwise
rule (:meth:`MaskFormerFusion.fuse_kmax_maskwise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .._ops.argmax import first_max
from .._ops.queries import assign_queries, kmax_paste_order, paste_in_order
from .._ops.resize import resize_bilinear
from ..categories import CategoryTable
from ..queries import Queries, as_query_list
from ..structures import Instances, PanopticResult
from .base import PanopticFusion, checked_output_size
from .kmax_graph import KMAX_REJECTED_LOGIT, KMaxGraph, KMaxMaskwiseGraph
from .maskformer_graph import MaskFormerGraph

__all__ = ["MaskFormerFusion"]

QueryFlavor = Literal["mask2former", "maskformer", "transformers", "kmax", "kmax_maskwise"]


@dataclass(frozen=True)
class _Rule:
    """How a flavour differs from Mask2Former's rule."""

    object_mask_threshold: float
    overlap_threshold: float
    mask_threshold: float
    paint_foreground_only: bool  # Mask2Former paints argmax region AND sigmoid >= t; the others the whole region
    foreground_of_weighted: bool  # HF thresholds score * sigmoid (its masks are scaled in place) for the area
    strict_float32_ratio: bool  # HF: float32(area / fg_area) > t; detectron2-style code: float64 ratio >= t
    resize_probabilities: bool  # HF upsamples sigmoid probabilities, the others upsample logits


_RULES: dict[str, _Rule] = {
    "mask2former": _Rule(0.8, 0.8, 0.5, True, False, False, False),
    "maskformer": _Rule(0.8, 0.8, 0.5, False, False, False, False),
    "transformers": _Rule(0.5, 0.8, 0.5, False, True, True, True),
    # deeplab2's pixelwise rule has its own path (fuse_kmax); only its thresholds are read from here
    "kmax": _Rule(0.7, 0.0, 0.4, False, False, False, False),
    # deeplab2's maskwise rule (fuse_kmax_maskwise), kMaX-DeepLab's defaults: thing class 0.7, overlap 0.8, pixel 0.4
    "kmax_maskwise": _Rule(0.7, 0.8, 0.4, False, False, False, False),
}

#: deeplab2's slot flavours: area limits apply to them only.
_KMAX = ("kmax", "kmax_maskwise")

#: deeplab2's logit for rejected slots (``_SMALL_CONSTANT_FOR_SOFTMAX``): their softmax share is 0.


class MaskFormerFusion(PanopticFusion):
    """Queries (class logits + mask logits) -> one :class:`PanopticResult` per image.

    Segment ``source`` is the query index (the first query of a merged stuff segment), ``score`` its class
    probability. Segments are numbered in query order (``"kmax_maskwise"``: in paste order, ``source`` the first
    pasted slot).

    Args:
        table: Category table.
        flavor: ``"mask2former"`` (default; OneFormer's rule is the same), ``"maskformer"``, ``"transformers"``
            (Hugging Face ``post_process_panoptic_segmentation`` of MaskFormer / Mask2Former / OneFormer) or
            ``"kmax"`` (deeplab2's pixelwise rule of kMaX-DeepLab / MaX-DeepLab, static shapes; see
            :meth:`fuse_kmax`) or ``"kmax_maskwise"`` (deeplab2's maskwise rule: slots ordered by
            ``class^a * mask^b`` and pasted in that order; see :meth:`fuse_kmax_maskwise`).
        class_map: ``(K,)`` contiguous id of each model class (:meth:`CategoryTable.class_index_map`); default
            the identity (the model's classes in the table's stuff-first order).
        object_mask_threshold: Keep a query iff its best class is not "no object" and its softmax score is
            ``> object_mask_threshold`` (float32). Default 0.8, HF's ``threshold`` 0.5. ``"kmax"``: a slot is kept
            iff its best class other than "no object" has probability ``>= object_mask_threshold`` (default 0.7);
            ``"kmax_maskwise"``: the same for thing slots (default 0.7), see ``stuff_object_mask_threshold``.
        overlap_threshold: Keep a segment iff ``region_area / foreground_area >= overlap_threshold`` in float64
            (``"mask2former"``, ``"maskformer"``) or ``float32(ratio) > overlap_threshold`` (``"transformers"``,
            its ``overlap_mask_area_threshold``). Default 0.8. Not used by ``"kmax"``. ``"kmax_maskwise"``: a slot is
            pasted iff its pixels still free number ``> overlap_threshold * its pixels`` (float32; default 0.8).
        mask_threshold: A pixel is a query's foreground iff ``sigmoid(mask) >= mask_threshold``
            (``"transformers"``: ``score * sigmoid(mask) >= mask_threshold``, as HF does). Default 0.5. ``"kmax"``: a
            pixel is confident iff its largest softmax over kept slots is ``> mask_threshold`` (default 0.4).
            ``"kmax_maskwise"``: a pixel belongs to a slot's binary mask iff the slot's softmax over all slots is
            ``> mask_threshold`` (default 0.4; below 0.5 masks may overlap).
        label_ids_to_fuse: Model class indices whose segments merge into one (``"transformers"`` only, as HF's
            argument). Default: the stuff classes (HF's default fuses nothing, which gives several segments per
            stuff category). The other flavours always merge stuff.
        resize_masks_to: ``(h, w)`` every mask logit map is first resized to (bilinear), as HF's Mask2Former
            processor does with ``(384, 384)``; default none.
        thing_area_limit: ``"kmax"`` / ``"kmax_maskwise"`` only: a thing slot's segment is kept iff its area
            ``>= thing_area_limit`` (deeplab2's ``count > limit - 0.5``); 0 (default) keeps all.
        stuff_area_limit: ``"kmax"`` / ``"kmax_maskwise"`` only: a stuff category's merged segment is kept iff its
            area ``>= stuff_area_limit``; 0 (default) keeps all.
        stuff_object_mask_threshold: ``"kmax_maskwise"`` only: a stuff slot may be pasted iff its best class other
            than "no object" has probability ``>= stuff_object_mask_threshold`` (default 0.5, kMaX-DeepLab's).
        reorder_weights: ``"kmax_maskwise"`` only: ``(a, b)`` of the paste order, slots sorted (stable) by
            ``class_probability ** a * mask_score ** b`` descending, the mask score being the mean softmax over the
            pixels of the slot's binary mask at the input mask resolution (0 for none). Default ``(1.0, 1.0)``.
        batched: :meth:`forward` fuses the batch as padded tensors with the static-shape graph of
            :func:`panoptic.export.export_fusion` (identical results; the images of a batch share the output
            size). Dense over ``(B, N, H, W)``: for devices and export checks, not for CPU speed (3-5x the
            per-image loop at COCO size, see ``docs/concepts/ops.md``).

    Example:
        >>> from panoptic.data import synthetic_categories
        >>> table = synthetic_categories()
        >>> fusion = MaskFormerFusion(table)
        >>> cls = torch.full((2, table.num_classes + 1), -5.0)
        >>> cls[0, 0] = cls[1, table.num_stuff] = 5.0  # query 0: the first stuff class, query 1: the first thing
        >>> masks = torch.full((2, 4, 4), -3.0)
        >>> masks[0, :, :2] = masks[1, :, 2:] = 3.0
        >>> result = fusion(Queries(cls, masks), output_size=(8, 8))[0]
        >>> result.segment_map[0].tolist(), result.source.tolist(), result.isthing.tolist()
        ([1, 1, 1, 1, 2, 2, 2, 2], [0, 1], [False, True])
    """

    def __init__(self, table: CategoryTable, flavor: QueryFlavor = "mask2former",
                 class_map: torch.Tensor | Sequence[int] | None = None,
                 object_mask_threshold: float | None = None, overlap_threshold: float | None = None,
                 mask_threshold: float | None = None, label_ids_to_fuse: Sequence[int] | None = None,
                 resize_masks_to: tuple[int, int] | None = None, thing_area_limit: int = 0,
                 stuff_area_limit: int = 0, stuff_object_mask_threshold: float | None = None,
                 reorder_weights: tuple[float, float] | None = None, batched: bool = False) -> None:
        super().__init__(table)
        if flavor not in _RULES:
            raise ValueError(f"unknown MaskFormerFusion flavor {flavor!r}; use one of {sorted(_RULES)}.")
        self.batched = bool(batched)
        rule = _RULES[flavor]
        self.flavor = flavor
        self.rule = rule
        self.object_mask_threshold = float(rule.object_mask_threshold if object_mask_threshold is None
                                           else object_mask_threshold)
        self.overlap_threshold = float(rule.overlap_threshold if overlap_threshold is None else overlap_threshold)
        self.mask_threshold = float(rule.mask_threshold if mask_threshold is None else mask_threshold)
        if (thing_area_limit or stuff_area_limit) and flavor not in _KMAX:
            raise ValueError("thing_area_limit and stuff_area_limit are deeplab2's (flavor='kmax' or "
                             "'kmax_maskwise'); the other flavours filter segments by overlap_threshold.")
        if (stuff_object_mask_threshold is not None or reorder_weights is not None) and flavor != "kmax_maskwise":
            raise ValueError("stuff_object_mask_threshold and reorder_weights belong to deeplab2's maskwise rule: "
                             "use flavor='kmax_maskwise'.")
        self.stuff_object_mask_threshold = float(0.5 if stuff_object_mask_threshold is None
                                                 else stuff_object_mask_threshold)
        weights = (1.0, 1.0) if reorder_weights is None else tuple(float(v) for v in reorder_weights)
        if len(weights) != 2 or min(weights) < 0 or any(v != v for v in weights):
            raise ValueError(f"reorder_weights must be (class_weight, mask_weight), two numbers >= 0, got "
                             f"{reorder_weights!r}.")
        self.reorder_weights: tuple[float, float] = (weights[0], weights[1])
        if int(thing_area_limit) < 0 or int(stuff_area_limit) < 0:
            raise ValueError("thing_area_limit and stuff_area_limit must be >= 0 pixels.")
        self.thing_area_limit, self.stuff_area_limit = int(thing_area_limit), int(stuff_area_limit)
        for name in ("object_mask_threshold", "overlap_threshold", "mask_threshold", "stuff_object_mask_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}.")
        cmap = torch.arange(table.num_classes) if class_map is None else torch.as_tensor(class_map)
        if cmap.ndim != 1 or cmap.numel() == 0 or cmap.is_floating_point() or cmap.dtype == torch.bool:
            raise ValueError(f"class_map must be a 1-D int sequence (contiguous id per model class), got "
                             f"{tuple(cmap.shape)} {cmap.dtype}; build it with table.class_index_map(...).")
        if int(cmap.min()) < 0 or int(cmap.max()) >= table.num_classes:
            raise ValueError(f"class_map values must be contiguous ids in 0..{table.num_classes - 1}; build it "
                             "with table.class_index_map(...).")
        self.register_buffer("class_map", cmap.long(), persistent=False)
        self.register_buffer("fuse_class", _fuse_flags(table.isthing_tensor()[cmap], label_ids_to_fuse, flavor),
                             persistent=False)
        if resize_masks_to is not None and (len(resize_masks_to) != 2 or min(int(v) for v in resize_masks_to) <= 0):
            raise ValueError(f"resize_masks_to must be (h, w) with positive ints, got {resize_masks_to!r}.")
        self.resize_masks_to = None if resize_masks_to is None else (int(resize_masks_to[0]), int(resize_masks_to[1]))

    @property
    def num_model_classes(self) -> int:
        """``K``, the model's class count (the length of ``class_map``)."""
        return int(self.class_map.numel())

    def forward(self, queries: Queries | Sequence[Queries],  # type: ignore[override]
                output_size: tuple[int, int] | None = None) -> list[PanopticResult]:
        """Fuse a batch.

        Args:
            queries: One :class:`Queries` per image (or one for a single image).
            output_size: ``(H, W)`` of the results; default each image's mask size (after ``resize_masks_to``).

        Returns:
            One result per image.
        """
        from .._ops.threads import call_pixels, fusion_threads  # here: panoptic._ops imports the fusion package

        if self.batched:
            from ..export import fusion_graph, run_exported  # panoptic.export imports this module

            return run_exported(fusion_graph(self), self, queries, output_size=output_size)
        qs = as_query_list(queries)
        output_size = checked_output_size(output_size)
        out = []
        for q in qs:
            # the input checks are passes over the masks too: inside the thread rule
            with fusion_threads(call_pixels(q.mask_logits, output_size or self.resize_masks_to), self.class_map.device):
                q.validate(self.num_model_classes)
                q = q.to(self.class_map.device)
                size = output_size or self.resize_masks_to or (int(q.mask_logits.shape[1]),
                                                               int(q.mask_logits.shape[2]))
                out.append(self.fuse_queries(q, size))
        return out

    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        """Not used: this fusion reads :class:`Queries`, not semantic logits and instances."""
        raise TypeError("MaskFormerFusion fuses Queries: call fusion(Queries(class_logits, mask_logits)) or "
                        "fusion.fuse_queries(queries, (H, W)).")

    def fuse_queries(self, queries: Queries, size: tuple[int, int]) -> PanopticResult:
        """Fuse one image's validated queries at output size ``size = (H, W)``."""
        if self.flavor == "kmax":
            return self.fuse_kmax(queries, size)
        if self.flavor == "kmax_maskwise":
            return self.fuse_kmax_maskwise(queries, size)
        rule = self.rule
        selected = self.kept_queries(queries, size, final_resize=False)
        if selected is None:
            return _empty(size, queries.class_logits.device)
        kept, sc, labels, prob = selected
        n = int(kept.numel())
        owner, region, fg_area, owner_fg = assign_queries(prob, sc, self.mask_threshold, rule.foreground_of_weighted,
                                                          sigmoid=not rule.resize_probabilities, size=size,
                                                          channels=self.final_resize_channels(queries))
        if rule.paint_foreground_only:  # Mask2Former paints the owned pixels that are the owner's foreground
            painted_owner = torch.where(owner_fg, owner, n)  # n: nobody
            painted = torch.bincount(painted_owner.reshape(-1), minlength=n + 1)[:n]
        else:
            painted_owner, painted = owner, region
        if rule.strict_float32_ratio:
            ratio_ok = (region.float() / fg_area.float()).double() > self.overlap_threshold
        else:
            ratio_ok = region.double() / fg_area.double() >= self.overlap_threshold
        valid = (region > 0) & (fg_area > 0) & (painted > 0) & ratio_ok
        category = self.class_map[labels]
        return self._assemble(painted_owner, valid, kept, category, self.fuse_class[labels], sc, size, painted)

    def kept_queries(self, queries: Queries, size: tuple[int, int], *,
                     final_resize: bool = True) -> tuple[torch.Tensor, ...] | None:
        """The query filter and the mask resize of the ``"mask2former"`` / ``"maskformer"`` / ``"transformers"``
        rule: the data-dependent part that runs before the per-pixel steps (and outside an exported graph).

        A query is kept iff its best class (softmax, ``"no object"`` included) is not ``"no object"`` and its score
        is ``> object_mask_threshold``.

        Returns:
            ``None`` if no query is kept, else the kept query indices ``(n,)`` int64, their scores ``(n,)`` float32,
            their model classes ``(n,)`` int64 and their masks at ``size`` ``(n, H, W)`` float32: logits, or for
            ``"transformers"`` sigmoid probabilities (HF upsamples probabilities). With ``final_resize=False`` the
            masks are returned before their last resize to ``size`` (the caller's per-pixel pass does it).
        """
        probs = torch.softmax(queries.class_logits.float(), -1)
        scores, labels = probs.max(-1)
        keep = (labels != self.num_model_classes) & (scores > self.object_mask_threshold)
        kept = torch.nonzero(keep)[:, 0]  # one host sync per image
        if int(kept.numel()) == 0:
            return None
        masks = queries.mask_logits[kept].float()  # a copy (index by tensor): the steps below work in place
        if self.resize_masks_to is not None and tuple(masks.shape[1:]) != self.resize_masks_to:
            # resized as in a batch of all Q masks, as HF does (torch's arithmetic depends on the batch size)
            masks = resize_bilinear(masks, self.resize_masks_to, channels=int(queries.mask_logits.shape[0]))
        if self.rule.resize_probabilities:  # HF: sigmoid first, then upsample the probabilities
            masks = masks.sigmoid_()
        if final_resize and tuple(masks.shape[1:]) != size:
            masks = resize_bilinear(masks, size, channels=self.final_resize_channels(queries))
        return kept, scores[kept], labels[kept], masks

    def final_resize_channels(self, queries: Queries) -> int | None:
        """The batch the kept masks are resized to the image as: all ``Q`` masks (Mask2Former and MaskFormer upsample
        every mask) or the kept ones (HF upsamples the kept probabilities); see ``resize_bilinear``."""
        return None if self.rule.resize_probabilities else int(queries.mask_logits.shape[0])

    def static_graph(self) -> MaskFormerGraph | KMaxGraph | KMaxMaskwiseGraph:
        """The static-shape module of the per-pixel path, which :func:`panoptic.export.export_fusion` traces."""
        isthing = self.table.isthing_tensor(self.class_map.device)
        if self.flavor == "kmax":
            return KMaxGraph(isthing, self.mask_threshold, self.thing_area_limit, self.stuff_area_limit)
        if self.flavor == "kmax_maskwise":
            return KMaxMaskwiseGraph(isthing, self.thing_area_limit, self.stuff_area_limit)
        rule = self.rule
        return MaskFormerGraph(self.table.num_classes, self.mask_threshold, self.overlap_threshold,
                               not rule.resize_probabilities, rule.paint_foreground_only,
                               rule.foreground_of_weighted, rule.strict_float32_ratio)

    def kmax_slots(self, queries: Queries, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """The slots of deeplab2's pixelwise rule: every slot's mask logits at ``size`` and its best class.

        Returns:
            ``logits`` ``(Q, H, W)`` float32 (resized with ``align_corners=True``), ``keep`` ``(Q,)`` bool (the
            best class, "no object" excluded, has probability ``>= object_mask_threshold``), ``category``
            ``(Q,)`` int64 contiguous category of the best class and ``conf`` ``(Q,)`` float32 its probability.
        """
        probs = torch.softmax(queries.class_logits.float(), -1)[:, :-1]
        conf, pred = probs.max(-1)
        logits = queries.mask_logits.float()
        if logits.shape[0] and tuple(logits.shape[1:]) != size:
            logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=True)[0]
        return logits, conf >= self.object_mask_threshold, self.class_map[pred], conf

    def fuse_kmax(self, queries: Queries, size: tuple[int, int]) -> PanopticResult:
        """deeplab2's pixelwise rule (``max_deeplab.py``), on all ``Q`` slots (static shapes until the table).

        A slot is kept iff its best class (the no-object column excluded) has probability ``>=``
        ``object_mask_threshold``; mask logits are resized with ``align_corners=True``; rejected slots get logit
        :data:`KMAX_REJECTED_LOGIT`; a pixel goes to the argmax slot and is confident iff the largest softmax over
        slots is ``> mask_threshold`` and the overall largest logit is a kept slot's; thing slots and stuff
        categories (merged) then pass the area limits.
        """
        logits, keep, category, conf = self.kmax_slots(queries, size)
        q = int(conf.numel())
        if q == 0:
            return _empty(size, queries.class_logits.device)
        detected = torch.where(keep.view(-1, 1, 1), logits, torch.full((), KMAX_REJECTED_LOGIT))
        top, slot = first_max(detected)
        confident = (torch.softmax(detected, 0).amax(0) > self.mask_threshold) & (logits.amax(0) == top)
        thing = self.table.isthing_tensor(category.device)[category]
        painted = confident & keep.any()  # deeplab2: no kept slot, no segment
        owner = torch.where(painted, slot, q)
        ok = self._kmax_area_limits(owner, category, thing)
        return self._assemble(owner, ok, torch.arange(q, device=ok.device), category, ~thing, conf, size)

    def kmax_paste(self, queries: Queries, size: tuple[int, int]) -> tuple[torch.Tensor, ...] | None:
        """The ordered paste of deeplab2's maskwise rule: the sequential, data-dependent part (run outside an
        exported graph, like the heuristic's paste).

        Returns:
            ``None`` if no slot may be pasted, else ``owner`` ``(H, W)`` int64 (position in ``paste`` of the slot
            pasted at each pixel, ``n`` for none), ``paste`` ``(n,)`` int64 the slots that may be pasted in paste
            order, and their ``category`` ``(n,)`` int64 and class probability ``conf`` ``(n,)`` float32.
        """
        probs = torch.softmax(queries.class_logits.float(), -1)[:, :-1]  # "no object" never vetoes
        conf, pred = probs.max(-1)
        if int(conf.numel()) == 0:
            return None
        category = self.class_map[pred]
        thing = self.table.isthing_tensor(category.device)[category]
        allowed = torch.where(thing, conf >= self.object_mask_threshold, conf >= self.stuff_object_mask_threshold)
        logits = queries.mask_logits.float()
        order = kmax_paste_order(logits, conf, self.mask_threshold, self.reorder_weights)
        if tuple(logits.shape[1:]) != size:
            logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=True)[0]
        probs = torch.softmax(logits, 0)  # over all slots: rejected slots take their share too
        paste = order[allowed[order]]  # a slot that may not be pasted changes nothing: leave its mask out
        if int(paste.numel()) == 0:
            return None
        owner, _ = paste_in_order(probs[paste] > self.mask_threshold, allowed[paste], self.overlap_threshold)
        return owner, paste, category[paste], conf[paste]

    def fuse_kmax_maskwise(self, queries: Queries, size: tuple[int, int]) -> PanopticResult:
        """deeplab2's maskwise rule (``max_deeplab.py``, ``transformer_post_processing="maskwise"``).

        Slots are sorted (stable, descending) by ``class_probability ** a * mask_score ** b`` (``reorder_weights``);
        a slot's binary mask is where its softmax over all slots is ``> mask_threshold`` at the output size
        (``align_corners=True``); in that order, a slot whose class passes its thing / stuff threshold (``>=``) is
        pasted onto the pixels still free iff they are ``> overlap_threshold`` of its mask; stuff slots of one
        category merge, then the area limits apply. Segments are numbered in paste order.
        """
        pasted = self.kmax_paste(queries, size)
        if pasted is None:
            return _empty(size, queries.class_logits.device)
        owner, paste, category, conf = pasted
        thing = self.table.isthing_tensor(category.device)[category]
        ok = self._kmax_area_limits(owner, category, thing)
        return self._assemble(owner, ok, paste, category, ~thing, conf, size)

    def _kmax_area_limits(self, owner: torch.Tensor, category: torch.Tensor, thing: torch.Tensor) -> torch.Tensor:
        """``(n,)`` bool: slot ``k`` has pixels and passes deeplab2's area limits (stuff: its category's area).

        ``owner``: ``(H, W)`` slot position at each pixel, ``n`` for none; ``category``, ``thing``: ``(n,)``.
        """
        n = int(category.numel())
        slot_area = torch.bincount(owner.reshape(-1), minlength=n + 1)[:n]
        ok = slot_area > 0
        if self.thing_area_limit > 0:
            ok &= ~thing | (slot_area >= self.thing_area_limit)
        if self.stuff_area_limit > 0:  # per category: stuff slots of one class are one segment
            class_area = torch.zeros(self.table.num_classes, dtype=torch.int64, device=slot_area.device)
            class_area.index_add_(0, category, torch.where(thing, 0, slot_area))
            ok &= thing | (class_area[category] >= self.stuff_area_limit)
        return ok

    def _assemble(self, owner: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor,
                  category: torch.Tensor, fuse: torch.Tensor, scores: torch.Tensor,
                  size: tuple[int, int], owner_area: torch.Tensor | None = None) -> PanopticResult:
        """Segment ids in query order (merged classes take their first query's id), the map and the table.

        ``owner``: ``(H, W)`` position of the kept query painted at each pixel, ``n`` for none; ``owner_area``:
        ``(n,)`` pixels of each position in ``owner`` if the caller has them (a segment's area is then their sum,
        without a pass over the map).
        """
        dev = owner.device
        n = int(kept.numel())
        pos = torch.arange(n, device=dev)
        # merge key: the category for merged classes, a key of its own (beyond every category) otherwise
        key = torch.where(fuse, category, self.table.num_classes + pos)
        vpos = pos[valid]
        uniq, inv = torch.unique(key[vpos], return_inverse=True)
        first = torch.full((int(uniq.numel()),), n, dtype=torch.int64, device=dev).scatter_reduce(
            0, inv, vpos, reduce="amin")
        order = torch.argsort(first)  # segments numbered by their first query
        seg_of_uniq = torch.empty_like(order)
        seg_of_uniq[order] = torch.arange(1, int(order.numel()) + 1, device=dev)
        lut = torch.zeros(n + 1, dtype=torch.int32, device=dev)
        lut[vpos] = seg_of_uniq[inv].int()
        seg_map = lut[owner]
        s = int(order.numel())
        if owner_area is not None:
            area = torch.zeros(s, dtype=torch.int64, device=dev).index_add_(0, seg_of_uniq[inv] - 1, owner_area[vpos])
        else:
            area = torch.bincount(seg_map.reshape(-1).long(), minlength=s + 1)[1:]
        rep = first[order]  # first query position of each segment, in id order
        cat = category[rep]
        h, w = size
        return PanopticResult(segment_map=seg_map, unknown_mask=torch.zeros(h, w, dtype=torch.bool, device=dev),
                              category=cat, isthing=self.table.isthing_tensor(dev)[cat],
                              score=scores[rep].float(), area=area, source=kept[rep])


def _fuse_flags(thing_of_class: torch.Tensor, label_ids_to_fuse: Sequence[int] | None, flavor: str) -> torch.Tensor:
    """``(K,)`` bool: the segments of model class ``k`` merge (the stuff classes, or HF's ``label_ids_to_fuse``)."""
    if label_ids_to_fuse is None:
        return ~thing_of_class
    if flavor != "transformers":
        raise ValueError("label_ids_to_fuse is HF transformers' argument (flavor='transformers'); the other "
                         "flavours always merge stuff segments of one category.")
    ids = torch.as_tensor(list(label_ids_to_fuse), dtype=torch.int64)
    k = int(thing_of_class.numel())
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
        raise ValueError(f"label_ids_to_fuse must be model class indices in 0..{k - 1}.")
    fuse = torch.zeros_like(thing_of_class)
    fuse[ids] = True
    return fuse


def _empty(size: tuple[int, int], device: torch.device) -> PanopticResult:
    h, w = size
    z = torch.zeros(0, dtype=torch.int64, device=device)
    return PanopticResult(segment_map=torch.zeros(h, w, dtype=torch.int32, device=device),
                          unknown_mask=torch.zeros(h, w, dtype=torch.bool, device=device), category=z,
                          isthing=z.bool(), score=z.float(), area=z, source=z)
