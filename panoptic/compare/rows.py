"""The rows of the comparison: which network's outputs, which fusion, and which inputs are replaced by ground truth.

Main table (paper Table 7): MR-CNN-PSP and UPSNet-C are their own networks tested with the ``"upsnet"``
:class:`~panoptic.fusion.HeuristicFusion`; UPSNet-CP is UPSNet's network tested with that heuristic; UPSNet is
UPSNet's network with its panoptic head.

Ablation (paper Table 6), all with UPSNet's panoptic head at inference:

=====================  ==========  =====================================================================
row                    network     fusion / inputs
=====================  ==========  =====================================================================
baseline               UPSNet-C    no unknown channel, detector classes (no panoptic loss in training)
+ panoptic loss        UPSNet      no unknown channel, detector classes
+ ICA                  UPSNet      no unknown channel, instance class assignment heuristic
+ unknown              UPSNet      the full head (= the UPSNet row of the main table)
+ GT boxes             UPSNet      ground-truth boxes; class, score and mask logits from the model
+ GT ICA               UPSNet      ground-truth boxes and classes (score 1); mask logits from the model
+ GT semantic          UPSNet      as above, and the semantic logits replaced by the ground truth
=====================  ==========  =====================================================================

The paper's loss-balance and RoI-loss rows need extra trainings and are not part of the default run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..categories import CategoryTable
from ..data import PanopticTarget
from ..fusion import PanopticFusion, UPSNetFusion, build_fusion
from ..fusion.oracle import oracle_inputs
from ..structures import Instances

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

ABLATION_FLAGS = ("pano_loss", "ica", "unknown", "gt_box", "gt_ica", "gt_seg")
"""Ablation table columns (paper Table 6: Pano., Our ICA, Unk., GT Box, GT ICA, GT Seg.)."""


@dataclass
class Inputs:
    """What a row's fusion needs for one image (all at the network's input resolution, valid region only).

    Attributes:
        semantic_logits: ``(1, C, h, w)``.
        instances: The detections.
        target: The image's ground truth (transformed like the image).
        mask_logits_fn: ``(boxes (N, 4), labels (N,)) -> (N, M, M)`` mask logits of the model for given boxes.
        classify_fn: ``boxes (N, 4) -> (scores (N,), labels (N,))``: the model's box classifier.
    """

    semantic_logits: torch.Tensor
    instances: Instances
    target: PanopticTarget
    mask_logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    classify_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


InputFn = Callable[[Inputs, CategoryTable], tuple[torch.Tensor, Instances]]


def predicted(inp: Inputs, table: CategoryTable) -> tuple[torch.Tensor, Instances]:
    """The network's own outputs."""
    return inp.semantic_logits, inp.instances


def _gt_instances(inp: Inputs, gt_labels: bool) -> Instances:
    t = inp.target
    assert inp.mask_logits_fn is not None and inp.classify_fn is not None
    dev = inp.semantic_logits.device
    boxes = t.boxes.to(dev).float()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes[keep]
    if gt_labels:
        labels = t.labels.to(dev)[keep].long()
        scores = torch.ones(len(labels), device=dev)
    else:
        scores, labels = inp.classify_fn(boxes)
    return Instances(boxes, scores.float(), labels, inp.mask_logits_fn(boxes, labels).float())


def gt_boxes(inp: Inputs, table: CategoryTable) -> tuple[torch.Tensor, Instances]:
    """Ground-truth boxes scored, classified and segmented by the model; predicted semantic logits."""
    return inp.semantic_logits, _gt_instances(inp, gt_labels=False)


def gt_boxes_classes(inp: Inputs, table: CategoryTable) -> tuple[torch.Tensor, Instances]:
    """Ground-truth boxes and classes, the model's mask logits; predicted semantic logits."""
    return inp.semantic_logits, _gt_instances(inp, gt_labels=True)


def gt_semantic(inp: Inputs, table: CategoryTable) -> tuple[torch.Tensor, Instances]:
    """As :func:`gt_boxes_classes` with the semantic logits of the ground truth (:func:`oracle_inputs`)."""
    sem, _ = oracle_inputs(inp.target.panoptic.to(inp.semantic_logits.device), table)
    h, w = inp.semantic_logits.shape[-2:]
    return sem[None, :, :h, :w], _gt_instances(inp, gt_labels=True)


@dataclass
class Row:
    """One evaluated configuration.

    Attributes:
        key: Unique id (a model id for main rows, ``"ablation/<name>"`` for ablation rows).
        label: Display name.
        network: The trained network whose outputs it fuses.
        fusion: The fusion.
        inputs: Which inputs it uses (predicted, or partly replaced by ground truth).
        flags: Ablation columns that are on (see :data:`ABLATION_FLAGS`); empty for main rows.
    """

    key: str
    label: str
    network: str
    fusion: PanopticFusion
    inputs: InputFn = predicted
    flags: Mapping[str, bool] = field(default_factory=dict)

    @property
    def needs_features(self) -> bool:
        """Whether the row re-runs the instance head on ground-truth boxes."""
        return self.inputs is not predicted


def _heuristic_like(head: PanopticFusion) -> PanopticFusion:
    area = getattr(head, "stuff_area_limit", None)
    return build_fusion("heuristic", head.table, stuff_area_limit=area)


def main_rows(models: tuple[str, ...], fusions: Mapping[str, PanopticFusion],
              names: Mapping[str, str]) -> list[Row]:
    """Main-table rows for ``models`` given each trained network's own inference fusion."""
    rows = []
    for m in models:
        if m == "upsnet_cp":
            rows.append(Row(m, names[m], "upsnet", _heuristic_like(fusions["upsnet"])))
        else:
            rows.append(Row(m, names[m], m, fusions[m]))
    return rows


def ablation_rows(head: UPSNetFusion, have_upsnet_c: bool) -> list[Row]:
    """Table-6-style rows around UPSNet's panoptic head ``head`` (its thresholds are kept in every row)."""

    def variant(unknown: bool, assignment: str) -> UPSNetFusion:
        return UPSNetFusion(head.table, unknown=unknown, class_assignment=assignment,  # type: ignore[arg-type]
                            assignment_threshold=head.assignment_threshold, stuff_area_limit=head.stuff_area_limit,
                            pruning=head.pruning)

    base = variant(False, "detector")
    full = variant(True, "heuristic")
    specs: list[tuple[str, str, PanopticFusion, InputFn, tuple[str, ...]]] = []
    if have_upsnet_c:
        specs.append(("baseline", "upsnet_c", base, predicted, ()))
    specs += [
        ("+ panoptic loss", "upsnet", base, predicted, ("pano_loss",)),
        ("+ ICA", "upsnet", variant(False, "heuristic"), predicted, ("pano_loss", "ica")),
        ("+ unknown", "upsnet", full, predicted, ("pano_loss", "ica", "unknown")),
        ("+ GT boxes", "upsnet", full, gt_boxes, ("pano_loss", "ica", "unknown", "gt_box")),
        ("+ GT ICA", "upsnet", full, gt_boxes_classes, ("pano_loss", "unknown", "gt_box", "gt_ica")),
        ("+ GT semantic", "upsnet", full, gt_semantic, ("pano_loss", "unknown", "gt_box", "gt_ica", "gt_seg")),
    ]
    return [Row(f"ablation/{name}", name, net, fusion, fn, {f: f in on for f in ABLATION_FLAGS})
            for name, net, fusion, fn, on in specs]
