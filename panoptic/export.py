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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ._ops.threads import fusion_threads
from .fusion.base import PanopticFusion, check_not_meta, fill_stuff_scores, prepare_instances, prepare_semantic
from .fusion.heuristic import HeuristicFusion
from .fusion.heuristic_graph import HeuristicGraph
from .fusion.pruning import prune_and_paste
from .fusion.upsnet_graph import UPSNetGraph
from .structures import Instances, PanopticResult

if TYPE_CHECKING:  # panoptic.fusion.upsnet runs its batched mode through this module
    from .fusion.upsnet import UPSNetFusion

__all__ = ["export_fusion", "run_exported"]


@dataclass
class PackedBatch:
    """The graph's inputs for a batch, and what maps its slots back to the caller's instances.

    Attributes:
        args: The graph's inputs: ``(sem, crop, masks, labels, scores, valid)`` for :meth:`UPSNetGraph.forward`,
            ``(sem, paint, labels, scores)`` for :meth:`HeuristicGraph.forward`.
        keep: Per image, ``(K_b,)`` int64 indices of the kept instances in the input ``Instances`` (slot order).
    """

    args: tuple[torch.Tensor, ...]
    keep: list[torch.Tensor]


def _has_graph(fusion: PanopticFusion) -> bool:
    """Whether ``fusion`` has a static-shape graph (its ``static_graph`` method: UPSNetFusion, HeuristicFusion)."""
    return callable(getattr(fusion, "static_graph", None))


def fusion_graph(fusion: PanopticFusion) -> UPSNetGraph | HeuristicGraph:
    """The static-shape module of ``fusion``'s per-pixel path.

    Raises:
        ValueError: For fusions without an exportable graph yet (all but :class:`UPSNetFusion` and
            :class:`HeuristicFusion`).
    """
    if _has_graph(fusion):
        return fusion.static_graph()
    raise ValueError(f"export supports UPSNetFusion and HeuristicFusion; {type(fusion).__name__} has no "
                     "static-shape graph yet (run it eagerly).")


def pack(fusion: PanopticFusion, semantic_logits: torch.Tensor, instances: Sequence[Instances],
         output_size: tuple[int, int] | None = None, min_slots: int = 1) -> PackedBatch:
    """Validate a batch and run the eager part of ``fusion`` on it: the padded inputs of its graph.

    Args:
        fusion: A :class:`UPSNetFusion` or :class:`HeuristicFusion`.
        semantic_logits: ``(B, C, h, w)``, as for ``fusion(...)``.
        instances: ``B`` :class:`Instances`.
        output_size: ``(H, W)``; default ``(h, w)``.
        min_slots: Pad the instance axis to at least this many slots (the graphs need ``N >= 1``).

    Raises:
        ValueError: For invalid inputs (as the eager fusion) or a fusion without a graph.
    """
    if isinstance(fusion, HeuristicFusion):
        return _pack_heuristic(fusion, semantic_logits, instances, output_size, min_slots)
    if _has_graph(fusion):
        return pack_upsnet(fusion, semantic_logits, instances, output_size, min_slots)  # type: ignore[arg-type]
    fusion_graph(fusion)  # raises the error that names the supported fusions
    raise AssertionError("unreachable")


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


def export_fusion(fusion: PanopticFusion, semantic_logits: torch.Tensor,
                  instances: Sequence[Instances]) -> torch.export.ExportedProgram:
    """``torch.export`` the per-pixel path of ``fusion`` with dynamic batch, height, width and instance count.

    Args:
        fusion: A :class:`UPSNetFusion` or :class:`HeuristicFusion`.
        semantic_logits: Example ``(B, C, H, W)`` logits (``H, W >= 2``).
        instances: Example ``B`` :class:`Instances`.

    Returns:
        The program; run it with :func:`run_exported`.
    """
    graph = fusion_graph(fusion).eval()
    if semantic_logits.ndim == 4 and semantic_logits.shape[0] == 1:  # a size-1 example dimension specialises
        semantic_logits, instances = semantic_logits.expand(2, -1, -1, -1), list(instances) * 2
    packed = pack(fusion, semantic_logits, instances, min_slots=2)
    if min(packed.args[0].shape[-2:]) < 2:
        raise ValueError("export_fusion needs example logits of at least 2x2 pixels (size-1 dimensions "
                         "cannot be dynamic).")
    dim = torch.export.Dim
    bd, hd, wd, nd = dim("batch", min=1), dim("height", min=1), dim("width", min=1), dim("instances", min=1)
    if isinstance(graph, HeuristicGraph):  # (sem, paint, labels, scores)
        shapes: tuple[dict[int, torch.export.Dim], ...] = (
            {0: bd, 2: hd, 3: wd}, {0: bd, 1: hd, 2: wd}, {0: bd, 1: nd}, {0: bd, 1: nd})
    else:  # (sem, crop, masks, labels, scores, valid)
        shapes = ({0: bd, 2: hd, 3: wd}, {0: bd, 1: nd}, {0: bd, 1: nd, 2: hd, 3: wd}, {0: bd, 1: nd},
                  {0: bd, 1: nd}, {0: bd, 1: nd})
    with torch.no_grad():
        return torch.export.export(graph, packed.args, dynamic_shapes=shapes)


def run_exported(program: torch.export.ExportedProgram | torch.nn.Module, fusion: PanopticFusion,
                 semantic_logits: torch.Tensor, instances: Sequence[Instances],
                 output_size: tuple[int, int] | None = None) -> list[PanopticResult]:
    """Pack the inputs as :func:`export_fusion` did, run ``program`` and assemble one result per image.

    Used exactly like ``fusion(semantic_logits, instances, output_size)``, with the same results.

    Args:
        program: From :func:`export_fusion`, or the eager module of :func:`fusion_graph` (same results).
        fusion: The fusion it was exported from (its table and pruning thresholds pack the inputs).
        semantic_logits: ``(B, C, h, w)``.
        instances: ``B`` :class:`Instances`.
        output_size: ``(H, W)``; default ``(h, w)``.
    """
    packed = pack(fusion, semantic_logits, instances, output_size)
    module = program.module() if isinstance(program, torch.export.ExportedProgram) else program
    with torch.no_grad():
        outputs = module(*packed.args)
    return assemble_results(fusion, packed, outputs)


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
    isthing = fusion.table.isthing_tensor(sem.device)
    out = []
    for b, keep in enumerate(packed.keep):
        live = area[b] > 0
        s = slot[b][live]
        # live slots are kept instances (< len(keep)); the appended 0 only keeps the lookup in range
        source = torch.where(s >= 0, torch.cat([keep, keep.new_zeros(1)])[s.clamp(0, len(keep))], -1)
        cat = category[b][live]
        result = PanopticResult(segment_map=segment_map[b], unknown_mask=unknown[b], category=cat,
                                isthing=isthing[cat], score=score[b][live], area=area[b][live], source=source)
        # the eager fusion's thread count: the softmax's vectorised chunks (and so its last bits) follow it
        with fusion_threads(int(sem.shape[2]) * int(sem.shape[3]), sem.device):
            out.append(fill_stuff_scores(result, sem[b]))
    return out
