"""The Kirillov et al. heuristic combiner (paste instances by score, then fill in stuff), in four flavors.

The public versions of this baseline differ in defaults and edge rules (see the reference notes,
``fusion-anchors.md`` §0, §1.1, §2.1, §3.2, §4.1). :class:`HeuristicFusion` re-implements each of them from
its described rules; ``flavor`` picks the rules and the defaults, keyword arguments override the defaults.

The semantic argmax is needed at every pixel but only as "which stuff class, or a thing class": one pass
over the logits (:func:`panoptic._ops.first_argmax_keys`)
writes that as a small integer key per pixel, collects the logits :func:`fill_stuff_scores` samples, and
sums the logits for the NaN/inf check while they are in cache (:class:`~panoptic.fusion.base.FiniteCheck`).
Work per instance is box-local (ROI masks are pasted into their box only; full-image masks are cropped to
the bounding box of their foreground once, for all instances together) and adds the instance to the keys
of the pixels it paints. One ``bincount`` of the keys then gives every area, and small lookup tables the
segment ids. On the CPU the instance loop takes its keep/drop decisions on host numbers (a read, no wait);
on other devices they stay tensors, so the loop never waits for the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .._ops import count_keys, first_argmax_keys
from ..categories import CategoryTable
from ..segments import assemble_from_keys
from ..structures import Instances, MaskKind, PanopticResult, mask_foreground
from .base import (
    FiniteCheck,
    PanopticFusion,
    fill_stuff_scores,
    fill_stuff_scores_sampled,
    prepare_semantic,
    score_stride,
    scratch,
)
from .heuristic_graph import HeuristicGraph
from .paste import box_regions, paste_masks
from .pruning import reverse_argsort

__all__ = ["HeuristicFusion"]

Region = tuple[int, int, int, int]
SemanticLayout = Literal["stuff_first", "detectron2"]
TieOrder = Literal["stable", "torch_argsort", "reverse"]


@dataclass(frozen=True)
class _Flavor:
    """Defaults and fixed rules of one public version (``None``: the rule does not exist there)."""

    score_threshold: float | None
    overlap_threshold: float | None
    min_free_fraction: float | None
    stuff_area_limit: float
    mask_threshold: float
    strict_mask: bool  # foreground iff prob > t (True) or prob >= t (False)
    overlap_eps: float  # added to the mask area in the overlap ratio's denominator
    stuff_before_paste: bool  # stuff area measured on the raw semantic map (UPSNet) or on what is left
    # Visit order of equal scores: Python's stable sorted(key=-score) (input order), torch.argsort(-scores)
    # itself, or numpy's argsort()[::-1] read with a stable sort (the later input first).
    tie_order: TieOrder


_FLAVORS = {
    "panopticapi": _Flavor(0.5, 0.5, None, 4096.0, 0.5, False, 0.0, False, "stable"),
    "detectron2": _Flavor(0.5, 0.5, None, 4096.0, 0.5, False, 0.0, False, "torch_argsort"),
    "mmdet": _Flavor(None, 0.5, None, 4096.0, 0.5, False, 1e-5, False, "torch_argsort"),
    "upsnet": _Flavor(0.6, None, 0.7, 4096.0, 0.5, True, 0.0, True, "reverse"),
}


class HeuristicFusion(PanopticFusion):
    """Kirillov et al. heuristic: paste instances in score order, then add one segment per stuff class.

    Shared rules (every flavor):

    * The semantic map is the argmax over all ``C`` channels (first index on ties). A pixel whose
      argmax is a thing channel is a "things" pixel; it stays void unless an instance paints it.
    * An instance's binary mask is its mask probability against ``mask_threshold``: ``p >= t``
      (``p > t`` for ``"upsnet"``), done on logits as ``logit >= log(t / (1 - t))`` (``>``), so the
      default 0.5 means ``logit >= 0`` (``logit > 0``). ROI masks are pasted with
      :func:`~panoptic.fusion.paste.paste_masks` (bilinear on logits; detectron2 and mmdet resize
      probabilities, which can move edge pixels) into their box; ``mask_space="image"`` masks are
      used whole, also outside their box.
    * Instances are visited by score, descending; equal scores in the flavor's reference order (below).
      A kept instance paints only its still unpainted pixels, as a new segment; an instance with an empty
      mask is dropped.
    * Ratios are computed in float64, as the Python/numpy references do.
    * Segments: things in paint order, then stuff in channel order, at most one per stuff class.
      Thing score = detection score, source = index in the input ``Instances``; stuff score = mean
      class probability (:func:`~panoptic.fusion.base.fill_stuff_scores`), source = -1.

    Flavors (``None`` for a keyword = the flavor's default); ``docs/fusion-strategies.md`` has one table
    per flavor with every rule, its reference file and each deliberate difference:

    * ``"panopticapi"`` (``combine_semantic_and_instance_predictions.py``, the default): keep an
      instance iff ``score >= score_threshold`` (0.5); equal scores in input order (Python's stable
      ``sorted``); drop it iff ``|mask ∧ painted| / |mask| > overlap_threshold`` (0.5); a stuff class keeps
      its unpainted pixels iff their count ``>= stuff_area_limit`` (4096), else they are void.
    * ``"detectron2"`` (Panoptic FPN ``combine_semantic_and_instance_outputs``): the same values and
      rules; equal scores in the order of ``torch.argsort(-scores)`` itself (not stable: on the CPU a
      long run of ties is not in input order), on the instances' device, like detectron2; its ``break`` at
      the first sorted score ``< score_threshold`` equals filtering. detectron2's semantic head merges all
      things into channel 0 (``semantic_layout="detectron2"``: channel 0 = the "things" logit, channels
      ``1..S`` = the stuff classes in the table's stuff order); its argmax sends a tie between the things
      logit and a stuff logit to things, so the pixel stays void. With stuff-first logits a tie goes to
      the stuff class (the only difference, and only on exact ties).
    * ``"mmdet"`` (``HeuristicFusionHead``): no score threshold (``score_threshold=None`` keeps all;
      mmdet filters in its RoI head); equal scores in ``torch.argsort(-scores)`` order; drop iff
      ``|mask ∧ painted| / (|mask| + 1e-5) > overlap_threshold`` (0.5); stuff as panopticapi (``>= 4096``
      after pasting). mmdet evaluates the ratio (and the threshold) in float32; here float64 (with the
      default 0.5 the decisions agree for masks under 2**24 pixels).
    * ``"upsnet"`` (UPSNet's ``get_combined_pan_result``): keep iff ``score >= score_threshold``
      (0.6); equal scores the later input first (its ``np.argsort(scores)[::-1]``, read as a stable sort);
      with ``free = mask ∧ ¬painted``, drop iff ``|free| / |mask| < min_free_fraction`` (0.7), i.e. kept iff
      ``>= 0.7`` exactly (the reference's float32 quotient against a float64 0.7 drops a mask exactly 70%
      free under numpy 1.x, keeps it under numpy 2); the stuff test runs on the RAW semantic map before
      instances are pasted: a stuff class whose total semantic area ``< stuff_area_limit`` (4096) is void,
      the others keep all their pixels not painted by an instance.

    Args:
        table: Category table (stuff channels first, then things).
        flavor: ``"panopticapi"``, ``"detectron2"``, ``"mmdet"`` or ``"upsnet"``.
        score_threshold: Minimum detection score (``>=``); ``None``: flavor default. Pass
            ``float("-inf")`` to keep every instance in any flavor.
        overlap_threshold: Maximum overlapped fraction of a mask (drop iff ratio ``>``); not used by
            ``"upsnet"``.
        min_free_fraction: Minimum unpainted fraction of a mask (drop iff ratio ``<``); ``"upsnet"`` only.
        stuff_area_limit: Minimum stuff area in pixels (kept iff ``>=``).
        mask_threshold: Mask probability threshold in ``(0, 1)``.
        semantic_layout: ``"stuff_first"`` (the table's ``C`` channels, stuff first, then things) or
            ``"detectron2"`` (``"detectron2"`` flavor only: ``S + 1`` channels, channel 0 the merged things
            logit, then the ``S`` stuff classes in the table's stuff order, as detectron2's ``sem_seg``).

    Raises:
        ValueError: Unknown flavor or layout, a keyword the flavor does not use, or an invalid value.

    Example:
        >>> table = CategoryTable.from_coco([{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}])
        >>> fusion = HeuristicFusion(table, "panopticapi", stuff_area_limit=1)
        >>> inst = Instances(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.9]),
        ...                  torch.tensor([0]), torch.ones(1, 28, 28))
        >>> res = fusion(torch.zeros(1, 2, 4, 4), [inst])[0]
        >>> res.category.tolist(), res.area.tolist()
        ([1, 0], [4, 12])
    """

    checks_finite = True  # in its one pass over the logits
    mask_kinds = ("logits", "probabilities", "binary")  # thresholded in their own units (mask_foreground)

    def __init__(self, table: CategoryTable, flavor: str = "panopticapi", *,
                 score_threshold: float | None = None, overlap_threshold: float | None = None,
                 min_free_fraction: float | None = None, stuff_area_limit: float | None = None,
                 mask_threshold: float | None = None, semantic_layout: SemanticLayout = "stuff_first") -> None:
        super().__init__(table)
        if flavor not in _FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; choose one of {sorted(_FLAVORS)}.")
        if semantic_layout not in ("stuff_first", "detectron2"):
            raise ValueError(f"semantic_layout must be 'stuff_first' or 'detectron2', got {semantic_layout!r}.")
        if semantic_layout == "detectron2" and flavor != "detectron2":
            raise ValueError(f"semantic_layout='detectron2' (detectron2's merged things channel) is read by the "
                             f"'detectron2' flavor only, not {flavor!r}; pass flavor='detectron2', or stuff-first "
                             "logits with one channel per category.")
        self.semantic_layout = semantic_layout
        f = _FLAVORS[flavor]
        if overlap_threshold is not None and f.overlap_threshold is None:
            raise ValueError(f"flavor {flavor!r} has no overlap_threshold; it keeps an instance by the free "
                             "fraction of its mask: pass min_free_fraction.")
        if min_free_fraction is not None and f.min_free_fraction is None:
            raise ValueError(f"flavor {flavor!r} has no min_free_fraction; it drops an instance by its "
                             "overlapped fraction: pass overlap_threshold.")
        self.flavor = flavor
        self._rules = f
        self.score_threshold = _number("score_threshold", score_threshold, f.score_threshold, allow_inf=True)
        self.overlap_threshold = _number("overlap_threshold", overlap_threshold, f.overlap_threshold)
        self.min_free_fraction = _number("min_free_fraction", min_free_fraction, f.min_free_fraction)
        self.stuff_area_limit = _number("stuff_area_limit", stuff_area_limit, f.stuff_area_limit)
        self.mask_threshold = _number("mask_threshold", mask_threshold, f.mask_threshold)
        if self.stuff_area_limit is not None and self.stuff_area_limit < 0:
            raise ValueError(f"stuff_area_limit must be >= 0 pixels, got {self.stuff_area_limit}.")
        t = self.mask_threshold
        if t is None or not 0.0 < t < 1.0:
            raise ValueError(f"mask_threshold is a probability in (0, 1), got {t}; 0.5 means logit >= 0.")
        self._mask_logit = math.log(t) - math.log1p(-t)  # exactly 0.0 for t = 0.5

    def extra_repr(self) -> str:
        keys = ("score_threshold", "overlap_threshold", "min_free_fraction", "stuff_area_limit",
                "mask_threshold")
        vals = ", ".join(f"{k}={getattr(self, k)}" for k in keys if getattr(self, k) is not None)
        layout = f", semantic_layout={self.semantic_layout!r}" if self.semantic_layout != "stuff_first" else ""
        return f"flavor={self.flavor!r}, {vals}{layout}"

    def prepare_semantic(self, semantic_logits: torch.Tensor, batch: int,
                         output_size: tuple[int, int] | None) -> torch.Tensor:
        """The base checks and resize; detectron2-layout logits become ``(B, S + 1, H, W)`` stuff-first logits.

        detectron2 takes the first maximum over ``[things, stuff_1 .. stuff_S]``; the things logit moves last
        as its next float up (``nextafter(t, inf)``), so that it beats a stuff logit iff ``t >= stuff`` and the
        first-maximum pass over ``[stuff_1 .. stuff_S, things]`` gives detectron2's argmax exactly.
        """
        if self.semantic_layout == "stuff_first":
            return super().prepare_semantic(semantic_logits, batch, output_size)
        ns = self.table.num_stuff
        layout = (ns + 1, f"semantic_layout='detectron2' needs S + 1 = {ns + 1}: channel 0 the merged things "
                  f"logit, then the table's {ns} stuff classes in its stuff order (stuff-first logits with one "
                  f"channel per category, {self.table.num_classes} here, take semantic_layout='stuff_first')")
        sem = prepare_semantic(semantic_logits, self.table, batch, output_size, check_finite=True, layout=layout)
        things = torch.nextafter(sem[:, :1], sem.new_tensor(float("inf")))
        return torch.cat([sem[:, 1:], things], 1)

    # ------------------------------------------------------------------------------------- fusion
    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        """Fuse one image.

        One pass over the logits (:func:`panoptic._ops.first_argmax_keys`) writes
        an ``(H, W)`` int32 key per pixel: its semantic class if that is a stuff class, else ``Nst`` ("a
        thing class"). Instances then add ``(k + 1) * (Nst + 1)`` to the keys of the pixels candidate ``k``
        paints (box-local). One ``bincount`` of the keys gives the instance areas and the stuff areas
        before (``"upsnet"``) or after pasting, and a small table turns keys into segment ids.

        Args:
            semantic_logits: ``(C, H, W)`` float logits at output size (validated by :meth:`forward`).
            instances: Validated instances on the same device; ``image``-space masks at ``(H, W)``.

        Returns:
            The panoptic result of size ``(H, W)``.
        """
        h, w = int(semantic_logits.shape[-2]), int(semantic_logits.shape[-1])
        ns, dev = self.table.num_stuff, semantic_logits.device
        # Stuff scores from logits sampled during the pass, unless they must stay differentiable.
        exact_scores = torch.is_grad_enabled() and semantic_logits.requires_grad
        stride = score_stride(h, w)
        samples = None
        if ns and not exact_scores:
            samples = scratch("heuristic.samples", (semantic_logits.shape[0], -(-h // stride), -(-w // stride)),
                              semantic_logits.dtype, dev)
        keys = scratch("heuristic.keys", (h, w), torch.int32, dev)
        idx = self._visit_order(instances)
        inst = instances[idx]
        with torch.no_grad():
            finite = FiniteCheck(semantic_logits)
            first_argmax_keys(semantic_logits, ns, keys, samples, stride, finite)
            finite.raise_if_not_finite()
            regions, masks = self._local_masks(inst, (h, w))
            self._paint_things(keys, regions, masks, host=dev.type == "cpu")
            counts = count_keys(keys, (len(inst) + 1) * (ns + 1))
        k = len(inst)
        result = assemble_from_keys(
            keys, counts, self._key_labels(counts, k),
            category=torch.cat([inst.labels + ns, torch.arange(ns, device=dev)]),
            isthing=torch.cat([torch.ones(k, dtype=torch.bool, device=dev),
                               torch.zeros(ns, dtype=torch.bool, device=dev)]),
            score=torch.cat([inst.scores.float(), torch.full((ns,), float("nan"), device=dev)]),
            source=torch.cat([idx, torch.full((ns,), -1, dtype=torch.int64, device=dev)]),
        )
        if samples is None:
            return fill_stuff_scores(result, semantic_logits)
        return fill_stuff_scores_sampled(result, samples.reshape(samples.shape[0], -1), stride)

    def static_graph(self) -> HeuristicGraph:
        """The static-shape module of the per-pixel path after the paste, which
        :func:`panoptic.export.export_fusion` traces (see :meth:`paint_instances` for the part before it)."""
        return HeuristicGraph(self.table.num_stuff, self.stuff_area_limit, self._rules.stuff_before_paste)

    def paint_instances(self, instances: Instances, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequential part of the rule alone: which instances are visited, and which paints each pixel.

        The exported path (:func:`panoptic.export.run_exported`) runs this eagerly and the rest of the rule in
        :class:`~panoptic.fusion.heuristic_graph.HeuristicGraph`; :meth:`fuse_image` runs the same steps.

        Args:
            instances: Validated instances on the logits' device (as :meth:`fuse_image` gets them).
            size: ``(H, W)``.

        Returns:
            ``(K,)`` int64 visit order (indices into ``instances`` passing the score test) and the ``(H, W)``
            int64 map of the visited candidate (a position in that order) that paints each pixel, ``-1`` for none.
        """
        idx = self._visit_order(instances)
        regions, masks = self._local_masks(instances[idx], size)
        keys = torch.zeros(size, dtype=torch.int32, device=instances.scores.device)
        with torch.no_grad():
            self._paint_things(keys, regions, masks, host=keys.device.type == "cpu")
        return idx, keys.long() // (self.table.num_stuff + 1) - 1

    def _visit_order(self, instances: Instances) -> torch.Tensor:
        """``(K,)`` int64 indices of the instances passing the score test, by score descending, equal scores in
        the flavor's reference order."""
        scores = instances.scores
        ties = self._rules.tie_order
        if ties == "stable":
            order = torch.sort(scores, descending=True, stable=True).indices
        elif ties == "torch_argsort":
            order = torch.argsort(-scores)
        else:
            order = reverse_argsort(scores)
        if self.score_threshold is None:
            return order
        # float64, like the references' Python floats (a float32 cast of e.g. 0.55 would move the boundary).
        return order[scores[order].double() >= self.score_threshold]

    def _binarize(self, logits: torch.Tensor, out: torch.Tensor | None = None,
                  kind: MaskKind = "logits") -> torch.Tensor:
        """Mask logits (or masks of another ``kind``) against the threshold (``out``: e.g. an int32 buffer, 1/0)."""
        if kind != "logits":
            return mask_foreground(logits, kind, self.mask_threshold, self._rules.strict_mask, out=out)
        if self._rules.strict_mask:
            return torch.gt(logits, self._mask_logit, out=out)
        return torch.ge(logits, self._mask_logit, out=out)

    def _local_masks(self, inst: Instances, size: tuple[int, int]) -> tuple[list[Region], list[torch.Tensor]]:
        """Half-open ``(y0, y1, x0, x1)`` regions and the ``(y1 - y0, x1 - x0)`` masks inside them: float mask
        logits (ROI masks pasted into their box, binarised while painting) or bool masks (image space)."""
        if inst.mask_space == "roi":
            regions = box_regions(inst.boxes, size)
            if inst.mask_kind == "logits":
                return regions.paste, paste_masks(inst.mask_logits, regions)
            # probabilities (binary: of 0/1) are pasted as probabilities and thresholded as such
            pasted = paste_masks(inst.mask_logits.float(), regions)
            return regions.paste, [self._binarize(m, kind="probabilities") for m in pasted]
        binary = self._binarize(inst.mask_logits, kind=inst.mask_kind)  # (K, H, W), the input's own size
        regions = _foreground_regions(binary)
        return regions, [binary[k, y0:y1, x0:x1] for k, (y0, y1, x0, x1) in enumerate(regions)]

    def _paint_things(self, keys: torch.Tensor, regions: list[Region], masks: list[torch.Tensor],
                      host: bool) -> None:
        """Paint instances in visit order: candidate ``k`` adds ``(k + 1) * (Nst + 1)`` to the keys it paints.

        A pixel is unpainted iff its key is ``<= Nst`` (a semantic key). Box-local, in int32 work buffers
        (vectorised on the CPU, unlike bool ones). With ``host`` (CPU tensors) the keep decision is taken on
        host numbers (a read, no device wait) and a dropped instance costs no painting; otherwise it stays a
        tensor, so the loop never waits for the device.
        """
        q = self.table.num_stuff + 1
        size = max((m.numel() for m in masks), default=0)
        bin_buf = torch.empty(size, dtype=torch.int32, device=keys.device)
        new_buf = torch.empty(size, dtype=torch.int32, device=keys.device)
        for k, ((y0, y1, x0, x1), m) in enumerate(zip(regions, masks, strict=True)):
            if m.numel() == 0:
                continue  # empty region: no pixel, dropped by the area > 0 rule
            kb = keys[y0:y1, x0:x1]  # a view: the in-place update below writes into `keys`
            if m.dtype != torch.bool:
                m = self._binarize(m, out=bin_buf[:m.numel()].view(m.shape))
            new = torch.lt(kb, q, out=new_buf[:m.numel()].view(m.shape)).mul_(m)  # mask pixels still unpainted
            area, free = m.sum(dtype=torch.int32), new.sum(dtype=torch.int32)
            if host:
                if self._keep_counts(int(area), int(free)):
                    kb.add_(new, alpha=(k + 1) * q)
            else:
                kb.add_(new * self._keep(area, free), alpha=(k + 1) * q)

    def _keep_counts(self, area: int, free: int) -> bool:
        """Whether an instance with ``area`` mask pixels, ``free`` of them unpainted, survives the overlap test
        (Python floats: float64, as in :meth:`_keep`)."""
        if area <= 0:
            return False
        if self.min_free_fraction is not None:
            return not free / area < self.min_free_fraction
        return not (area - free) / (area + self._rules.overlap_eps) > self.overlap_threshold

    def _keep(self, area: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """0-dim bool tensor: :meth:`_keep_counts` on tensors (no host sync)."""
        area, free = area.double(), free.double()
        if self.min_free_fraction is not None:
            return (area > 0) & ~(free / area < self.min_free_fraction)
        return (area > 0) & ~((area - free) / (area + self._rules.overlap_eps) > self.overlap_threshold)

    def _key_labels(self, counts: torch.Tensor, k: int) -> torch.Tensor:
        """Candidate of every key (``-1``: void), candidates being the ``k`` instances then the stuff classes.

        Key ``j * (Nst + 1) + c``: painted by instance ``j - 1`` (``j >= 1``) or unpainted (``j = 0``), semantic
        class ``c`` (``c = Nst``: a thing class). An unpainted stuff pixel joins its class's segment if the
        class passes the area test; an unpainted thing pixel is void.
        """
        ns = self.table.num_stuff
        q, dev = ns + 1, counts.device
        per_key = counts.reshape(k + 1, q)
        # stuff area: unpainted pixels, or (UPSNet) all pixels of the raw semantic map
        area = per_key[:, :ns].sum(0) if self._rules.stuff_before_paste else per_key[0, :ns]
        ok = area.double() >= self.stuff_area_limit
        stuff = torch.where(ok, torch.arange(k, k + ns, device=dev), -1)
        return torch.cat([stuff, torch.full((1,), -1, dtype=torch.int64, device=dev),
                          torch.arange(k, device=dev).repeat_interleave(q)])


def _foreground_regions(binary: torch.Tensor) -> list[Region]:
    """Bounding regions of the foreground of ``(K, H, W)`` bool masks (one host transfer for all)."""
    k, h, w = binary.shape
    if k == 0:
        return []
    rows, cols = binary.any(2).to(torch.uint8), binary.any(1).to(torch.uint8)
    nonempty = rows.amax(1).long()  # an empty mask gets the empty region (0, 0, 0, 0)
    coords = torch.stack([rows.argmax(1), h - rows.flip(1).argmax(1),
                          cols.argmax(1), w - cols.flip(1).argmax(1)], 1) * nonempty[:, None]
    return [tuple(r) for r in coords.tolist()]  # type: ignore[misc]


def _number(name: str, value: float | None, default: float | None, allow_inf: bool = False) -> float | None:
    """``value`` (or the flavor's ``default`` when ``None``) as a float; ``ValueError`` if not a number."""
    if value is None:
        value = default
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return v
