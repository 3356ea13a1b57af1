"""Evaluate every row of one trained network in a single pass over the held-out images.

Each image runs through the network once, at batch size 1 (timed, the network part); then every row fed by that
network fuses the outputs (each fusion timed on its own) and updates its own streaming
:class:`~panoptic.evaluation.PanopticQuality`. The network's semantic mIoU and box / mask AP are accumulated
once per network. Nothing per image is kept except the few results the figure shows, so memory does not grow
with the number of images. Predictions are scored at the images' original size.
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
from .rows import Inputs, Row

__all__ = ["NetworkEvaluation", "RowEvaluation", "evaluate_network", "figure_panels"]


@dataclass
class RowEvaluation:
    """A row's accumulated results.

    Attributes:
        pq: Its panoptic quality accumulator.
        fusion_ms: Fusion time per timed image (milliseconds).
        figure: Results of the figure images (index in the split -> result at original size).
    """

    pq: PanopticQuality
    fusion_ms: list[float] = field(default_factory=list)
    figure: dict[int, PanopticResult] = field(default_factory=dict)


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


def evaluate_network(network: str, model: PanopticModel, dataset: CocoPanopticDataset, rows: Sequence[Row],
                     table: CategoryTable, *, max_images: int | None = None, timing_warmup: int = 2,
                     figure_indices: Sequence[int] = (), on_image: Callable[[], None] | None = None
                     ) -> NetworkEvaluation:
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
    """
    model.eval()  # type: ignore[attr-defined]
    mine = [r for r in rows if r.network == network]
    panoptic = {r.key: PanopticEvaluator(table, r.fusion, inputs=_row_inputs(model, r, table),
                                         figure_indices=figure_indices) for r in mine}
    semantic, detection = SemanticEvaluator(table), DetectionEvaluator(table)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    stats = inference_on_dataset(model, dataset, single_images(dataset, n), [semantic, detection, *panoptic.values()],
                                 keep_features=any(r.needs_features for r in mine),
                                 timing_warmup=timing_warmup if n > timing_warmup else 0, on_image=on_image)
    evals = {k: RowEvaluation(ev.pq, ev.fusion_ms, ev.figure) for k, ev in panoptic.items()}
    return NetworkEvaluation(network, evals, semantic.evaluate(), detection.evaluate(), stats.network_ms,
                             stats.input_size, n)


def figure_panels(dataset: CocoPanopticDataset, indices: Sequence[int]) -> dict[int, tuple[np.ndarray, PanopticResult]]:
    """Original images (``(H, W, 3)`` uint8) and ground truths of the figure images."""
    out = {}
    for i in indices:
        img = dataset.load_image(i).permute(1, 2, 0).numpy()
        out[i] = (img, dataset.load_panoptic(i))
    return out
