"""Export a fusion's per-pixel path with ``torch.export`` and run the exported program like the eager fusion.

The exported module takes plain padded tensors and returns fixed-shape tensors; the
:class:`~panoptic.structures.PanopticResult` objects are assembled outside the graph. The data-dependent
selections run eagerly in :func:`pack` (a documented split, see ``docs/concepts/ops.md``):

* :class:`~panoptic.fusion.UPSNetFusion`: graph :class:`~panoptic.fusion.upsnet_graph.UPSNetGraph`; the pruning
  and the box-local mask paste stay outside.
* :class:`~panoptic.fusion.HeuristicFusion` (every flavor): graph
  :class:`~panoptic.fusion.heuristic_graph.HeuristicGraph`; the score filter and the sequential paste in score
  order (each keep decision depends on the pixels pasted before it, like NMS) stay outside and hand the graph
  a paint map.
* :class:`~panoptic.fusion.MaskFormerFusion` (``"mask2former"``, ``"maskformer"``, ``"transformers"``): graph
  :class:`~panoptic.fusion.maskformer_graph.MaskFormerGraph`; the query filter (``score > object_mask_threshold``)
  and the mask resize to the output size stay outside, and the kept queries reach the graph padded.
  ``"kmax"``: graph :class:`~panoptic.fusion.kmax_graph.KMaxGraph`, the whole pixelwise rule on every slot (padded);
  only the mask resize stays outside. ``"kmax_maskwise"``: graph :class:`~panoptic.fusion.kmax_graph.KMaxMaskwiseGraph`;
  the ordered paste (sequential, like the heuristic's) stays outside and hands the graph the owner map.
* :class:`~panoptic.fusion.CentreOffsetFusion` (both flavours): graph
  :class:`~panoptic.fusion.centre_graph.CentreOffsetGraph`; the centre NMS and its ``top_k`` cut stay outside, and
  the centres reach the graph padded.

Every function takes the fusion's own inputs: ``(semantic_logits, instances)``, ``(queries,)`` for the query
fusion or ``(centre_offsets,)`` (a list) for the centre fusion, then ``output_size`` by keyword.

Example:
    >>> from panoptic.categories import CategoryTable
    >>> from panoptic.fusion import UPSNetFusion
    >>> table = CategoryTable.from_coco([{"id": 1, "isthing": 0}, {"id": 2, "isthing": 1}])
    >>> fusion = UPSNetFusion(table, stuff_area_limit=0)
    >>> sem = torch.zeros(2, 2, 6, 6); sem[:, 1, :3, :3] = 5.0
    >>> inst = Instances(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([0.9]), torch.tensor([0]),
    ...                  torch.full((1, 28, 28), 3.0))
    >>> graph = fusion_graph(fusion)  # the eager module; export_fusion(fusion, sem, [inst, inst]) traces it
    >>> results = run_exported(graph, fusion, sem, [inst, Instances.empty()])
    >>> [r.num_segments for r in results], results[0].equal(fusion(sem[:1], [inst])[0])
    ([2, 1], True)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ._ops.threads import fusion_threads
from .centre_offsets import CentreOffsets, checked_centre_inputs
from .fusion.base import (
    PanopticFusion,
    check_not_meta,
    checked_output_size,
    fill_stuff_scores,
    prepare_instances,
    prepare_semantic,
)
from .fusion.centre_graph import CentreOffsetGraph
from .fusion.heuristic import HeuristicFusion
from .fusion.heuristic_graph import HeuristicGraph
from .fusion.kmax_graph import KMaxGraph, KMaxMaskwiseGraph
from .fusion.maskformer_graph import MaskFormerGraph
from .fusion.pruning import prune_and_paste
from .fusion.upsnet_graph import UPSNetGraph
from .queries import Queries, as_query_list
from .structures import Instances, PanopticResult

if TYPE_CHECKING:  # panoptic.fusion.upsnet, .maskformer and .centre_offset run their batched modes through here
    from .fusion.centre_offset import CentreOffsetFusion
    from .fusion.maskformer import MaskFormerFusion
    from .fusion.upsnet import UPSNetFusion

__all__ = ["export_fusion", "run_exported"]


@dataclass
class PackedBatch:
    """The graph's inputs for a batch, and what maps its slots back to the caller's instances.

    Attributes:
        args: The graph's inputs: ``(sem, crop, masks, labels, scores, valid)`` for :meth:`UPSNetGraph.forward`,
            ``(sem, paint, labels, scores)`` for :meth:`HeuristicGraph.forward`, ``(masks, scores, category, fuse,
            valid)`` for :meth:`MaskFormerGraph.forward`, ``(logits, keep, category, score, valid)`` for
            :meth:`KMaxGraph.forward`, ``(owner, category, score, valid)`` for :meth:`KMaxMaskwiseGraph.forward`,
            ``(sem, offsets, centres, centre_score, valid)`` for :meth:`CentreOffsetGraph.forward`.
        keep: Per image, ``(K_b,)`` int64 indices of the kept instances (queries) in the input (slot order).
        stuff_scores: Fill the stuff segments' scores from the semantic logits ``args[0]`` when assembling.
    """

    args: tuple[torch.Tensor, ...]
    keep: list[torch.Tensor]
    stuff_scores: bool = True  # fill stuff scores from the semantic logits (args[0]); not for query fusions


def _has_graph(fusion: PanopticFusion) -> bool:
    """Whether ``fusion`` has a static-shape graph (its ``static_graph`` method: UPSNetFusion, HeuristicFusion,
    MaskFormerFusion)."""
    return callable(getattr(fusion, "static_graph", None))


def fusion_graph(fusion: PanopticFusion) -> (UPSNetGraph | HeuristicGraph | MaskFormerGraph | KMaxGraph
                                              | KMaxMaskwiseGraph | CentreOffsetGraph):
    """The static-shape module of ``fusion``'s per-pixel path.

    Raises:
        ValueError: For fusions without a static-shape graph (a user's own :class:`PanopticFusion`).
    """
    if _has_graph(fusion):
        return fusion.static_graph()
    raise ValueError(f"export supports UPSNetFusion, HeuristicFusion, MaskFormerFusion and CentreOffsetFusion; "
                     f"{type(fusion).__name__} has no static-shape graph yet (run it eagerly).")


def pack(fusion: PanopticFusion, *inputs: Any, output_size: tuple[int, int] | None = None,
         min_slots: int = 1) -> PackedBatch:
    """Validate a batch and run the eager part of ``fusion`` on it: the padded inputs of its graph.

    Args:
        fusion: A :class:`UPSNetFusion`, :class:`HeuristicFusion`, :class:`MaskFormerFusion` or
            :class:`CentreOffsetFusion`.
        *inputs: What ``fusion(...)`` takes: ``semantic_logits`` ``(B, C, h, w)`` and ``B`` :class:`Instances`, the
            :class:`Queries` (one per image), or a list of :class:`CentreOffsets` of one size.
        output_size: ``(H, W)``; default as the eager fusion (the centre fusion takes none).
        min_slots: Pad the instance (query, centre) axis to at least this many slots (the graphs need ``N >= 1``).

    Raises:
        ValueError: For invalid inputs (as the eager fusion) or a fusion without a graph.
    """
    if callable(getattr(fusion, "find_centres", None)):  # CentreOffsetFusion (not imported here: no cycle)
        if output_size is not None:
            raise ValueError("CentreOffsetFusion fuses at the inputs' own size; drop output_size (resize the "
                             "CentreOffsets before fusion).")
        return _pack_centres(fusion, *inputs, min_slots=min_slots)  # type: ignore[arg-type]
    if callable(getattr(fusion, "kept_queries", None)):  # MaskFormerFusion (not imported here: no cycle)
        if fusion.flavor in ("kmax", "kmax_maskwise"):  # type: ignore[attr-defined]
            return _pack_kmax(fusion, *inputs, output_size=output_size, min_slots=min_slots)  # type: ignore[arg-type]
        return _pack_queries(fusion, *inputs, output_size=output_size, min_slots=min_slots)  # type: ignore[arg-type]
    if len(inputs) != 2:
        raise TypeError(f"{type(fusion).__name__} takes (semantic_logits, instances), got {len(inputs)} inputs.")
    semantic_logits, instances = inputs
    if isinstance(fusion, HeuristicFusion):
        return _pack_heuristic(fusion, semantic_logits, instances, output_size, min_slots)
    if _has_graph(fusion):
        return pack_upsnet(fusion, semantic_logits, instances, output_size, min_slots)  # type: ignore[arg-type]
    fusion_graph(fusion)  # raises the error that names the supported fusions
    raise AssertionError("unreachable")


def _pack_queries(fusion: MaskFormerFusion, queries: Queries | Sequence[Queries],
                  output_size: tuple[int, int] | None, min_slots: int) -> PackedBatch:
    """:func:`pack` for :class:`MaskFormerGraph`: per image the query filter and the mask resize, then padding."""
    qs, (h, w) = _query_batch(fusion, queries, output_size)
    dev = fusion.class_map.device
    selected = [fusion.kept_queries(q, (h, w)) for q in qs]
    n = max([0 if s is None else int(s[0].numel()) for s in selected] + [min_slots, 1])
    b = len(qs)
    masks = torch.zeros(b, n, h, w, dtype=torch.float32, device=dev)
    scores = torch.zeros(b, n, dtype=torch.float32, device=dev)
    category = torch.zeros(b, n, dtype=torch.int64, device=dev)
    fuse = torch.zeros(b, n, dtype=torch.bool, device=dev)
    valid = torch.zeros(b, n, dtype=torch.bool, device=dev)
    keep = []
    for i, sel in enumerate(selected):
        if sel is None:
            keep.append(torch.zeros(0, dtype=torch.int64, device=dev))
            continue
        kept, sc, labels, m = sel
        k = int(kept.numel())
        masks[i, :k], scores[i, :k], valid[i, :k] = m, sc, True
        category[i, :k], fuse[i, :k] = fusion.class_map[labels], fusion.fuse_class[labels]
        keep.append(kept)
    return PackedBatch((masks, scores, category, fuse, valid), keep, stuff_scores=False)


def _query_batch(fusion: MaskFormerFusion, queries: Queries | Sequence[Queries],
                 output_size: tuple[int, int] | None) -> tuple[list[Queries], tuple[int, int]]:
    """The validated queries of a batch on the fusion's device, and their one output size."""
    qs = [q.to(fusion.class_map.device) for q in as_query_list(queries)]
    output_size = checked_output_size(output_size)
    sizes = set()
    for q in qs:
        q.validate(fusion.num_model_classes)
        sizes.add(output_size or fusion.resize_masks_to or (int(q.mask_logits.shape[1]), int(q.mask_logits.shape[2])))
    if len(sizes) > 1:
        raise ValueError(f"the images of one batch must share the output size, got {sorted(sizes)}; pass "
                         "output_size=(H, W) (or resize_masks_to) to fuse them as one batch.")
    return qs, (sizes.pop() if sizes else (output_size or (1, 1)))


def _pack_kmax(fusion: MaskFormerFusion, queries: Queries | Sequence[Queries],
               output_size: tuple[int, int] | None, min_slots: int) -> PackedBatch:
    """:func:`pack` for the kMaX graphs: every slot resized and padded (``"kmax"``), or the ordered paste's owner
    map and its slots (``"kmax_maskwise"``)."""
    qs, (h, w) = _query_batch(fusion, queries, output_size)
    dev = fusion.class_map.device
    pixelwise = fusion.flavor == "kmax"
    slots = [fusion.kmax_slots(q, (h, w)) if pixelwise else fusion.kmax_paste(q, (h, w)) for q in qs]
    counts = [0 if s is None else int(s[-1].numel()) for s in slots]
    n, b = max([*counts, min_slots, 1]), len(qs)
    category = torch.zeros(b, n, dtype=torch.int64, device=dev)
    score = torch.zeros(b, n, dtype=torch.float32, device=dev)
    valid = torch.zeros(b, n, dtype=torch.bool, device=dev)
    keep = []
    if pixelwise:
        logits = torch.zeros(b, n, h, w, dtype=torch.float32, device=dev)
        kept = torch.zeros(b, n, dtype=torch.bool, device=dev)
        for i, (lg, kp, cat, conf) in enumerate(slots):  # type: ignore[misc]
            q = int(conf.numel())
            if q:
                logits[i, :q], kept[i, :q], category[i, :q], score[i, :q], valid[i, :q] = lg, kp, cat, conf, True
            keep.append(torch.arange(q, device=dev))
        return PackedBatch((logits, kept, category, score, valid), keep, stuff_scores=False)
    owner = torch.full((b, h, w), n, dtype=torch.int64, device=dev)
    for i, sel in enumerate(slots):
        if sel is None:
            keep.append(torch.zeros(0, dtype=torch.int64, device=dev))
            continue
        own, paste, cat, conf = sel
        q = int(paste.numel())
        owner[i] = torch.where(own == q, n, own)  # "none" is the padded count
        category[i, :q], score[i, :q], valid[i, :q] = cat, conf, True
        keep.append(paste)
    return PackedBatch((owner, category, score, valid), keep, stuff_scores=False)


def _pack_centres(fusion: CentreOffsetFusion, inputs: Sequence[CentreOffsets], min_slots: int) -> PackedBatch:
    """:func:`pack` for :class:`CentreOffsetGraph`: per image the centre NMS (a data-dependent count), then padding.

    Label inputs (:meth:`CentreOffsets.from_labels`) reach the graph as a one-hot map, whose first argmax is the
    label; their stuff scores stay NaN, as eagerly.
    """
    c = fusion.table.num_classes
    sems, offsets, heats, found, kinds = [], [], [], [], set()
    for x in checked_centre_inputs(inputs):
        x.validate(c)
        kinds.add(x.semantic_kind)
        sem = x.semantic.float() if x.semantic_kind == "logits" else F.one_hot(x.semantic[0].long(), c).permute(
            2, 0, 1).float()
        sems.append(sem)
        offsets.append(x.offsets.float())
        heats.append(x.centre_heatmap[0].float())
        found.append(fusion.find_centres(heats[-1]))
    if len({tuple(s.shape[1:]) for s in sems}) > 1 or len(kinds) > 1:
        raise ValueError("the images of one batch must share their size and semantic kind (logits or labels); "
                         "fuse them in separate calls.")
    if not sems:
        raise ValueError("CentreOffsetFusion got no image; pass one CentreOffsets per image.")
    dev = sems[0].device
    b, k = len(sems), max([int(f.shape[0]) for f in found] + [min_slots, 1])
    centres = torch.zeros(b, k, 2, dtype=torch.int64, device=dev)
    score = torch.zeros(b, k, dtype=torch.float32, device=dev)
    valid = torch.zeros(b, k, dtype=torch.bool, device=dev)
    for i, (f, heat) in enumerate(zip(found, heats, strict=True)):
        n = int(f.shape[0])
        centres[i, :n], valid[i, :n] = f, True
        score[i, :n] = heat[f[:, 0], f[:, 1]]
    keep = [torch.arange(int(f.shape[0]), device=dev) for f in found]
    return PackedBatch((torch.stack(sems), torch.stack(offsets), centres, score, valid), keep,
                       stuff_scores=kinds == {"logits"})


def _pack_heuristic(fusion: HeuristicFusion, semantic_logits: torch.Tensor, instances: Sequence[Instances],
                    output_size: tuple[int, int] | None, min_slots: int) -> PackedBatch:
    """:func:`pack` for :class:`HeuristicGraph`: score filter and sequential paste, per image."""
    check_not_meta(semantic_logits, instances)
    if fusion.semantic_layout == "stuff_first":  # the eager fusion checks finiteness in its own pass
        sem = prepare_semantic(semantic_logits, fusion.table, len(instances), output_size, check_finite=True)
    else:
        sem = fusion.prepare_semantic(semantic_logits, len(instances), output_size)
    b, _, h, w = sem.shape
    dev = sem.device
    keep, paints, kept = [], [], []
    for inst in instances:
        inst = prepare_instances(inst, fusion.table, (h, w), dev, fusion.mask_kinds)
        idx, paint = fusion.paint_instances(inst, (h, w))
        keep.append(idx)
        paints.append(paint)
        kept.append(inst[idx])
    n = max([len(k) for k in keep] + [min_slots, 1])
    labels = torch.zeros(b, n, dtype=torch.int64, device=dev)
    scores = torch.zeros(b, n, dtype=torch.float32, device=dev)
    for i, inst in enumerate(kept):
        labels[i, :len(inst)] = inst.labels
        scores[i, :len(inst)] = inst.scores.float()
    paint = torch.stack(paints) if paints else torch.zeros(0, h, w, dtype=torch.int64, device=dev)
    return PackedBatch((sem, paint, labels, scores), keep)


def pack_upsnet(fusion: UPSNetFusion, semantic_logits: torch.Tensor, instances: Sequence[Instances],
                output_size: tuple[int, int] | None = None, min_slots: int = 1) -> PackedBatch:
    """Validate, prune and paste a batch into the padded tensors of :class:`UPSNetGraph`.

    Args:
        fusion: Supplies the table and pruning thresholds.
        semantic_logits: ``(B, C, h, w)``, as for ``fusion(...)``.
        instances: ``B`` :class:`Instances`.
        output_size: ``(H, W)``; default ``(h, w)``.
        min_slots: Pad the instance axis to at least this many slots (the graph needs ``N >= 1``).
    """
    check_not_meta(semantic_logits, instances)
    sem = prepare_semantic(semantic_logits, fusion.table, len(instances), output_size, check_finite=True)
    b, _, h, w = sem.shape
    dev = sem.device
    kept, keep, local = [], [], []
    for inst in instances:
        inst = prepare_instances(inst, fusion.table, (h, w), dev, fusion.mask_kinds)
        k, loc = prune_and_paste(inst, (h, w), fusion.pruning)
        kept.append(inst[k])
        keep.append(k)
        local.append(loc)
    n = max([len(k) for k in keep] + [min_slots, 1])
    crop = torch.zeros(b, n, 4, dtype=torch.int64, device=dev)
    masks = torch.zeros(b, n, h, w, dtype=sem.dtype, device=dev)
    labels = torch.zeros(b, n, dtype=torch.int64, device=dev)
    scores = torch.zeros(b, n, dtype=torch.float32, device=dev)
    valid = torch.zeros(b, n, dtype=torch.bool, device=dev)
    for i, (inst, loc) in enumerate(zip(kept, local, strict=True)):
        k = len(inst)
        if not k:
            continue
        crop[i, :k] = torch.tensor(loc.regions.crop, dtype=torch.int64, device=dev)
        for j, ((y0, y1, x0, x1), m) in enumerate(zip(loc.regions.paste, loc.logits, strict=True)):
            if m.numel():
                masks[i, j, y0:y1, x0:x1] = m
        labels[i, :k] = inst.labels
        scores[i, :k] = inst.scores.float()
        valid[i, :k] = True
    return PackedBatch((sem, crop, masks, labels, scores, valid), keep)


def export_fusion(fusion: PanopticFusion, *example: Any,
                  output_size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the per-pixel path of ``fusion`` with dynamic batch, height, width and instance count.

    Args:
        fusion: A :class:`UPSNetFusion`, :class:`HeuristicFusion`, :class:`MaskFormerFusion` or
            :class:`CentreOffsetFusion`.
        *example: What ``fusion(...)`` takes, as an example: ``(B, C, H, W)`` logits (``H, W >= 2``) and ``B``
            :class:`Instances`, the :class:`Queries` of ``B`` images (masks of at least 2x2 pixels), or a list of
            ``B`` :class:`CentreOffsets` of one size.
        output_size: ``(H, W)`` of the example, as for ``fusion(...)`` (the program's sizes stay dynamic).

    Returns:
        The program; run it with :func:`run_exported`.
    """
    graph = fusion_graph(fusion).eval()
    example = _two_images(example)  # a size-1 example dimension specialises
    packed = pack(fusion, *example, output_size=output_size, min_slots=2)
    if min(packed.args[0].shape[-2:]) < 2:
        raise ValueError("export_fusion needs example logits (masks) of at least 2x2 pixels (size-1 dimensions "
                         "cannot be dynamic).")
    dim = torch.export.Dim
    bd, hd, wd, nd = dim("batch", min=1), dim("height", min=1), dim("width", min=1), dim("instances", min=1)
    shapes: tuple[dict[int, torch.export.Dim], ...]
    if isinstance(graph, HeuristicGraph):  # (sem, paint, labels, scores)
        shapes = ({0: bd, 2: hd, 3: wd}, {0: bd, 1: hd, 2: wd}, {0: bd, 1: nd}, {0: bd, 1: nd})
    elif isinstance(graph, CentreOffsetGraph):  # (sem, offsets, centres, centre_score, valid)
        shapes = ({0: bd, 2: hd, 3: wd}, {0: bd, 2: hd, 3: wd}, {0: bd, 1: nd}, {0: bd, 1: nd}, {0: bd, 1: nd})
    elif isinstance(graph, (MaskFormerGraph, KMaxGraph)):  # (masks, scores, category, fuse, valid), the same shapes
        shapes = ({0: bd, 1: nd, 2: hd, 3: wd}, {0: bd, 1: nd}, {0: bd, 1: nd}, {0: bd, 1: nd}, {0: bd, 1: nd})
    elif isinstance(graph, KMaxMaskwiseGraph):  # (owner, category, score, valid)
        shapes = ({0: bd, 1: hd, 2: wd}, {0: bd, 1: nd}, {0: bd, 1: nd}, {0: bd, 1: nd})
    else:  # (sem, crop, masks, labels, scores, valid)
        shapes = ({0: bd, 2: hd, 3: wd}, {0: bd, 1: nd}, {0: bd, 1: nd, 2: hd, 3: wd}, {0: bd, 1: nd},
                  {0: bd, 1: nd}, {0: bd, 1: nd})
    with torch.no_grad():
        return torch.export.export(graph, packed.args, dynamic_shapes=shapes)


def _two_images(example: tuple[Any, ...]) -> tuple[Any, ...]:
    """A one-image example repeated to two images (a size-1 batch dimension would be specialised)."""
    if len(example) == 2 and isinstance(example[0], torch.Tensor):
        sem, inst = example
        if sem.ndim == 4 and sem.shape[0] == 1:
            return sem.expand(2, -1, -1, -1), list(inst) * 2
        return example
    if len(example) == 1 and isinstance(example[0], Sequence) and example[0] and all(
            isinstance(x, CentreOffsets) for x in example[0]):
        return (list(example[0]) * 2,) if len(example[0]) == 1 else example
    if len(example) == 1:
        qs = as_query_list(example[0])
        return (qs * 2,) if len(qs) == 1 else (qs,)
    return example


def run_exported(program: torch.export.ExportedProgram | torch.nn.Module, fusion: PanopticFusion, *inputs: Any,
                 output_size: tuple[int, int] | None = None) -> list[PanopticResult]:
    """Pack the inputs as :func:`export_fusion` did, run ``program`` and assemble one result per image.

    Used exactly like ``fusion(*inputs, output_size=output_size)``, with the same results.

    Args:
        program: From :func:`export_fusion`, or the eager module of :func:`fusion_graph` (same results).
        fusion: The fusion it was exported from (its table and thresholds pack the inputs).
        *inputs: ``semantic_logits`` ``(B, C, h, w)`` and ``B`` :class:`Instances`, the :class:`Queries`, or a
            list of :class:`CentreOffsets`.
        output_size: ``(H, W)``; default as the eager fusion.
    """
    packed = pack(fusion, *inputs, output_size=output_size)
    module = program_module(program) if isinstance(program, torch.export.ExportedProgram) else program
    with torch.no_grad():
        outputs = module(*packed.args)
    return assemble_results(fusion, packed, outputs)


# ExportedProgram -> its callable module; weak keys: a module does not keep its program alive
_MODULES: weakref.WeakKeyDictionary[torch.export.ExportedProgram, torch.nn.Module] = weakref.WeakKeyDictionary()
_MODULES_LOCK = threading.Lock()


def program_module(program: torch.export.ExportedProgram) -> torch.nn.Module:
    """``program.module()``, built once per program and reused while the program lives.

    Building the module re-creates its graph (about 30 ms for the UPSNet graph, twice what the graph itself takes
    at 256x512), so :func:`run_exported` would otherwise pay it on every call.
    """
    with _MODULES_LOCK:
        module = _MODULES.get(program)
        if module is None:
            module = _MODULES[program] = program.module()
    return module


def assemble_results(fusion: PanopticFusion, packed: PackedBatch,
                     outputs: Sequence[torch.Tensor]) -> list[PanopticResult]:
    """One :class:`PanopticResult` per image from the graph's outputs (e.g. from ONNX Runtime, as tensors).

    Args:
        fusion: The exported fusion.
        packed: The inputs the outputs were computed from (:func:`pack`).
        outputs: ``(segment_map, unknown_mask, category, score, area, slot)`` of the graph's ``forward``.
    """
    segment_map, unknown, category, score, area, slot = outputs
    sem = packed.args[0]
    isthing = fusion.table.isthing_tensor(segment_map.device)
    out = []
    for b, keep in enumerate(packed.keep):
        live = area[b] > 0
        s = slot[b][live]
        # live slots are kept instances (< len(keep)); the appended 0 only keeps the lookup in range
        source = torch.where(s >= 0, torch.cat([keep, keep.new_zeros(1)])[s.clamp(0, len(keep))], -1)
        cat = category[b][live]
        result = PanopticResult(segment_map=segment_map[b], unknown_mask=unknown[b], category=cat,
                                isthing=isthing[cat], score=score[b][live], area=area[b][live], source=source)
        if not packed.stuff_scores:
            out.append(result)
            continue
        # the eager fusion's thread count: the softmax's vectorised chunks (and so its last bits) follow it
        with fusion_threads(int(sem.shape[2]) * int(sem.shape[3]), sem.device):
            out.append(fill_stuff_scores(result, sem[b]))
    return out
