"""Evaluate every row of one trained network in a single pass over the held-out images.

Each image runs through the network once, at batch size 1 (timed, the network part); then every row fed by that
network fuses the outputs (each fusion timed on its own) and updates its own streaming
:class:`~panoptic.evaluation.PanopticQuality`. The network's semantic mIoU and box / mask AP are accumulated
once per network. Nothing per image is kept except the few results the figure shows, so memory does not grow
with the number of images. Predictions are scored at the images' original size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..categories import CategoryTable
from ..constants import IGNORE_INDEX
from ..data import CocoPanopticDataset, PanopticTarget
from ..data.targets import masks_to_boxes
from ..data.transforms import resize_panoptic
from ..evaluation import DetectionAP, PanopticQuality, SemanticIoU
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scale_instances(inst: Instances, sy: float, sx: float) -> Instances:
    scale = inst.boxes.new_tensor([sx, sy, sx, sy])
    return Instances(inst.boxes * scale, inst.scores, inst.labels, inst.mask_logits, mask_space=inst.mask_space)


def _ground_truth(dataset: CocoPanopticDataset, index: int, target: PanopticTarget
                  ) -> tuple[PanopticResult, torch.Tensor, bool]:
    """``(panoptic GT at original size, semantic GT, resized?)``."""
    h, w = target.image_size
    if tuple(target.orig_size) == (h, w):
        gt = target.panoptic
        if gt.image_size != (h, w):
            gt = replace(gt, segment_map=gt.segment_map[:h, :w], unknown_mask=gt.unknown_mask[:h, :w])
        return gt.to("cpu"), target.semantic[:h, :w].cpu(), False
    gt = dataset.load_panoptic(index)
    return gt, gt.semantic_map(void=IGNORE_INDEX), True


def _detection_gt(gt: PanopticResult, table: CategoryTable) -> tuple[torch.Tensor, ...]:
    """Boxes, labels, masks and crowd flags of every thing segment (crowd ones are COCO ignore regions)."""
    things = torch.nonzero(gt.isthing).reshape(-1)
    ids = things + 1
    masks = gt.segment_map[None].long() == ids[:, None, None]
    return masks_to_boxes(masks), (gt.category[things] - table.num_stuff).long(), masks, gt.iscrowd[things].clone()


@torch.no_grad()
def evaluate_network(network: str, model: PanopticModel, dataset: CocoPanopticDataset, rows: Sequence[Row],
                     table: CategoryTable, *, max_images: int | None = None, timing_warmup: int = 2,
                     figure_indices: Sequence[int] = (), on_image: Callable[[], None] | None = None
                     ) -> NetworkEvaluation:
    """Run ``model`` over ``dataset`` once and evaluate every row of ``rows`` fed by it.

    Args:
        network: The network id (rows with another ``network`` are ignored).
        model: The network (any :class:`~panoptic.models.PanopticModel`).
        dataset: The held-out split (evaluation transforms).
        rows: Rows to evaluate.
        table: Category table.
        max_images: Evaluate the first this many images only.
        timing_warmup: The first this many images are not timed.
        figure_indices: Images whose results are kept for the figure.
        on_image: Called after each image (progress).
    """
    device = next(model.parameters()).device
    model.eval()
    mine = [r for r in rows if r.network == network]
    evals = {r.key: RowEvaluation(PanopticQuality(table)) for r in mine}
    sem = SemanticIoU(table.num_classes, names=list(table.names))
    det = DetectionAP(table)
    need_features = any(r.needs_features for r in mine)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    network_ms: list[float] = []
    keep_fig = set(figure_indices)
    image_size = (0, 0)
    for index in range(n):
        image, target = dataset[index]
        h, w = target.image_size
        image_size = image_size if index else (int(image.shape[-2]), int(image.shape[-1]))
        x = model.normalize(image[None].to(device))
        _sync(device)
        t0 = time.perf_counter()
        out = model.network(x, [(h, w)], keep_features=need_features)
        _sync(device)
        timed = index >= timing_warmup or n <= timing_warmup
        if timed:
            network_ms.append(1000 * (time.perf_counter() - t0))
        logits = out.semantic_logits[:1, :, :h, :w].float()
        inst = out.instances[0]
        gt, sem_gt, resized = _ground_truth(dataset, index, target)
        orig = gt.image_size
        sy, sx = orig[0] / h, orig[1] / w

        sem_pred = logits[0].argmax(0).cpu()
        if resized:
            sem_pred = F.interpolate(sem_pred[None, None].float(), size=orig, mode="nearest-exact")[0, 0].long()
        sem.update(sem_pred, sem_gt)
        boxes, labels, masks, crowd = _detection_gt(gt, table)
        det_inst = _scale_instances(inst.to("cpu"), sy, sx) if resized else inst.to("cpu")
        det.update(det_inst, boxes, labels, masks, crowd)

        inputs = Inputs(logits, inst, target)
        if need_features:
            feats = out.features

            def mask_fn(b: torch.Tensor, lab: torch.Tensor, feats: Any = feats) -> torch.Tensor:
                return model.mask_logits(feats, [b], [lab])[0]

            def classify_fn(b: torch.Tensor, feats: Any = feats) -> tuple[torch.Tensor, torch.Tensor]:
                return model.classify_boxes(feats, [b])[0]

            inputs.mask_logits_fn, inputs.classify_fn = mask_fn, classify_fn
        for row in mine:
            sem_in, inst_in = row.inputs(inputs, table)
            _sync(device)
            t1 = time.perf_counter()
            result = row.fusion(sem_in, [inst_in])[0]
            _sync(device)
            ev = evals[row.key]
            if timed:
                ev.fusion_ms.append(1000 * (time.perf_counter() - t1))
            result = result.to("cpu")
            if resized:
                result = resize_panoptic(result, orig)
            ev.pq.update(gt, result)
            if index in keep_fig:
                ev.figure[index] = result
        if on_image is not None:
            on_image()
    return NetworkEvaluation(network, evals, sem.compute(), det.compute(), network_ms, image_size, n)


def figure_panels(dataset: CocoPanopticDataset, indices: Sequence[int]) -> dict[int, tuple[np.ndarray, PanopticResult]]:
    """Original images (``(H, W, 3)`` uint8) and ground truths of the figure images."""
    out = {}
    for i in indices:
        img = dataset.load_image(i).permute(1, 2, 0).numpy()
        out[i] = (img, dataset.load_panoptic(i))
    return out
