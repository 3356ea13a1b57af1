"""Evaluate every row of one trained network in a single pass over the held-out images.

Each image runs through the network once, at batch size 1 (timed, the network part); then every row fed by that
network fuses the outputs (each fusion timed on its own) and updates its own streaming
:class:`~panoptic.evaluation.PanopticQuality`. The network's semantic mIoU and box / mask AP are accumulated
once per network. Per image only its per-class PQ counts (``(C, 4)`` numbers, for the bootstrap intervals) and
the few results the figure shows are kept. Predictions are scored at the images' original size. The pass is
:func:`~panoptic.engine.inference.inference_on_dataset` with one evaluator per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..categories import CategoryTable
from ..data import CocoPanopticDataset
from ..engine.evaluators import DetectionEvaluator, PanopticEvaluator, SemanticEvaluator
from ..engine.inference import ImageOutput, inference_on_dataset, single_images
from ..evaluation import PanopticQuality
from ..models import PanopticModel
from ..structures import Instances, PanopticResult
from .intervals import metric_stats
from .rows import Inputs, Row

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []


@dataclass
class RowEvaluation:
    """A row's accumulated results.

    Attributes:
        pq: Its panoptic quality accumulator.
        fusion_ms: Fusion time per timed image (milliseconds).
        figure: Results of the figure images (index in the split -> result at original size).
        per_image: Each image's ``(C, 4)`` ``tp, fp, fn, iou`` per class (the bootstrap's input, see
            :mod:`panoptic.compare.intervals`).
    """

    pq: PanopticQuality
    fusion_ms: list[float] = field(default_factory=list)
    figure: dict[int, PanopticResult] = field(default_factory=dict)
    per_image: list[np.ndarray] = field(default_factory=list)

    def image_stats(self) -> np.ndarray:
        """``(N, C, 4)`` per-image statistics in evaluation order."""
        return np.stack(self.per_image) if self.per_image else np.zeros((0, self.pq.table.num_classes, 4))


@dataclass
class NetworkEvaluation:
    """One network's pass.

    Attributes:
        network: Network id.
        rows: Row key -> :class:`RowEvaluation`.
        semantic: The semantic head's ``SemanticIoU.compute()``.
        detection: ``DetectionAP.compute()`` of the detections.
        network_ms: Network time per timed image (milliseconds).
        image_size: ``(H, W)`` of the (first) evaluated input.
        num_images: Images evaluated.
    """

    network: str
    rows: dict[str, RowEvaluation]
    semantic: dict[str, Any]
    detection: dict[str, Any]
    network_ms: list[float]
    image_size: tuple[int, int]
    num_images: int


def _row_inputs(model: PanopticModel, row: Row, table: CategoryTable
                ) -> Callable[[ImageOutput], tuple[torch.Tensor, Instances]]:
    """The row's fusion inputs of an image: the network's outputs, partly replaced by ground truth."""

    def inputs(image: ImageOutput) -> tuple[torch.Tensor, Instances]:
        inp = Inputs(image.semantic_logits, image.instances, image.target)
        feats = image.features
        if feats is not None:
            inp.mask_logits_fn = lambda b, lab: model.mask_logits(feats, [b], [lab])[0]
            inp.classify_fn = lambda b: model.classify_boxes(feats, [b])[0]
        return row.inputs(inp, table)

    return inputs


OnResult = Callable[[int, Row, PanopticResult, int], None]
"""``(image index, row, result at original size, detections given to the fusion)``."""


class _RowEvaluator(PanopticEvaluator):
    """A row: its fusion on its inputs, each image scored on its own and merged (exact), so that the image's
    statistics are kept too."""

    def __init__(self, row: Row, model: PanopticModel, table: CategoryTable, figure_indices: Sequence[int],
                 on_result: OnResult | None) -> None:
        super().__init__(table, row.fusion, inputs=_row_inputs(model, row, table), figure_indices=figure_indices)
        self.row, self.on_result = row, on_result
        self.per_image: list[np.ndarray] = []

    def process(self, image: ImageOutput) -> None:
        """Fuse, score the image alone, merge it into the row's totals, keep its statistics."""
        result, inst = self.fuse(image)
        one = PanopticQuality(self.table)
        one.update(image.ground_truth, result)
        self.pq.merge(one)
        self.per_image.append(metric_stats(one))
        if self.on_result is not None:
            self.on_result(image.index, self.row, result, len(inst))
        if image.index in self.keep:
            self.figure[image.index] = result


def evaluate_network(network: str, model: PanopticModel, dataset: CocoPanopticDataset, rows: Sequence[Row],
                     table: CategoryTable, *, max_images: int | None = None, timing_warmup: int = 2,
                     figure_indices: Sequence[int] = (), on_image: Callable[[], None] | None = None,
                     on_result: OnResult | None = None) -> NetworkEvaluation:
    """Run ``model`` over ``dataset`` once, one image at a time, and evaluate every row of ``rows`` fed by it.

    Args:
        network: The network id (rows with another ``network`` are ignored).
        model: The network (any :class:`~panoptic.models.PanopticModel`).
        dataset: The held-out split (evaluation transforms).
        rows: Rows to evaluate.
        table: Category table.
        max_images: Evaluate the first this many images only.
        timing_warmup: The first this many images are not timed (all are when there are no more).
        figure_indices: Images whose results are kept for the figure.
        on_image: Called after each image (progress).
        on_result: Called with ``(image index, row, result at original size, detections given to the fusion)``
            after each row's fusion (e.g. :class:`~panoptic.compare.rule_counts.RuleCounter`).
    """
    model.eval()  # type: ignore[attr-defined]
    mine = [r for r in rows if r.network == network]
    panoptic = {r.key: _RowEvaluator(r, model, table, figure_indices, on_result) for r in mine}
    semantic, detection = SemanticEvaluator(table), DetectionEvaluator(table)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    stats = inference_on_dataset(model, dataset, single_images(dataset, n), [semantic, detection, *panoptic.values()],
                                 keep_features=any(r.needs_features for r in mine),
                                 timing_warmup=timing_warmup if n > timing_warmup else 0, on_image=on_image)
    evals = {k: RowEvaluation(ev.pq, ev.fusion_ms, ev.figure, ev.per_image) for k, ev in panoptic.items()}
    return NetworkEvaluation(network, evals, semantic.evaluate(), detection.evaluate(), stats.network_ms,
                             stats.input_size, n)


def figure_panels(dataset: CocoPanopticDataset, indices: Sequence[int]) -> dict[int, tuple[np.ndarray, PanopticResult]]:
    """Original images (``(H, W, 3)`` uint8) and ground truths of the figure images."""
    out = {}
    for i in indices:
        img = dataset.load_image(i).permute(1, 2, 0).numpy()
        out[i] = (img, dataset.load_panoptic(i))
    return out
