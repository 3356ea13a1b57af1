"""Evaluator objects for :func:`~panoptic.engine.inference.inference_on_dataset`: panoptic quality of a fusion,
semantic mIoU, box / mask AP. Each compares at the images' original size."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from ..categories import CategoryTable
from ..data.targets import masks_to_boxes
from ..evaluation import DetectionAP, PanopticQuality, SemanticIoU
from ..fusion import PanopticFusion
from ..structures import Instances, PanopticResult
from .distributed import DistInfo, all_gather_objects, all_reduce_sum
from .inference import ImageOutput

__all__ = ["DetectionEvaluator", "PanopticEvaluator", "SemanticEvaluator"]

InputFn = Callable[[ImageOutput], tuple[torch.Tensor, Instances]]
"""An image's fusion inputs: ``(semantic logits (1, C, h, w), instances)``."""


def _own_inputs(image: ImageOutput) -> tuple[torch.Tensor, Instances]:
    return image.semantic_logits, image.instances


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PanopticEvaluator:
    """PQ / SQ / RQ of ``fusion`` on the network's outputs (or on inputs that ``inputs`` derives from them).

    Args:
        table: Category table.
        fusion: The fusion to score.
        inputs: The fusion's inputs per image; default the network's own logits and detections.
        figure_indices: Dataset indices whose results are kept in :attr:`figure`.

    Attributes:
        pq: The streaming accumulator.
        fusion_ms: Fusion time per timed image (milliseconds).
        figure: Kept results (dataset index -> result at original size).
    """

    def __init__(self, table: CategoryTable, fusion: PanopticFusion, *, inputs: InputFn = _own_inputs,
                 figure_indices: Collection[int] = ()) -> None:
        self.table, self.fusion, self.inputs = table, fusion, inputs
        self.keep = set(figure_indices)
        self.pq = PanopticQuality(table)
        self.fusion_ms: list[float] = []
        self.figure: dict[int, PanopticResult] = {}

    def process(self, image: ImageOutput) -> None:
        """Fuse (timed when the image is), resize to the original size and score against the ground truth."""
        result, _ = self.fuse(image)
        self.score(image, result)
        if image.index in self.keep:
            self.figure[image.index] = result

    def fuse(self, image: ImageOutput) -> tuple[PanopticResult, Instances]:
        """``(the fusion's result at the original size on the CPU, the instances it was given)``."""
        sem, inst = self.inputs(image)
        _sync(sem.device)
        t0 = time.perf_counter()
        result = self.fusion(sem, [inst])[0]
        _sync(sem.device)
        if image.timed:
            self.fusion_ms.append(1000 * (time.perf_counter() - t0))
        return image.to_original(result), inst

    def score(self, image: ImageOutput, result: PanopticResult) -> None:
        """Add the image's PQ statistics (keyed by dataset index, for an exact merge across ranks)."""
        self.pq.update(image.ground_truth, result, key=image.index)

    def evaluate(self, info: DistInfo | None = None) -> dict[str, Any]:
        """:meth:`PanopticQuality.compute`, over every rank's images (exact merge in dataset-index order)."""
        if info is not None and info.distributed:
            merged = PanopticQuality(self.table)
            for state in all_gather_objects(self.pq.export_state(), info):
                merged.merge_state(state)
            self.pq = merged
        return self.pq.compute()


class SemanticEvaluator:
    """Semantic mIoU and pixel accuracy of the argmax of the semantic logits."""

    def __init__(self, table: CategoryTable) -> None:
        self.sem = SemanticIoU(table.num_classes, names=list(table.names))

    def process(self, image: ImageOutput) -> None:
        """Add the image's confusion counts."""
        self.sem.update(image.semantic_prediction(), image.semantic_gt)

    def evaluate(self, info: DistInfo | None = None) -> dict[str, Any]:
        """:meth:`SemanticIoU.compute` of the confusion matrices summed over the ranks."""
        if info is not None:
            self.sem.load_state_dict(all_reduce_sum(self.sem.state_dict(), info))
        return self.sem.compute()


class DetectionEvaluator:
    """COCO box and mask AP of the detections against the thing segments (crowd ones are ignore regions).

    Single process: the accumulated detections are not merged across ranks.
    """

    def __init__(self, table: CategoryTable) -> None:
        self.table = table
        self.det = DetectionAP(table)

    def process(self, image: ImageOutput) -> None:
        """Add the image's detections (boxes scaled to the original size) and ground-truth instances."""
        gt = image.ground_truth
        things = torch.nonzero(gt.isthing).reshape(-1)
        masks = gt.segment_map[None].long() == (things + 1)[:, None, None]
        labels = (gt.category[things] - self.table.num_stuff).long()
        inst = image.instances.to("cpu")
        if image.resized:
            sy, sx = image.scale
            inst = Instances(inst.boxes * inst.boxes.new_tensor([sx, sy, sx, sy]), inst.scores, inst.labels,
                             inst.mask_logits, mask_space=inst.mask_space)
        self.det.update(inst, masks_to_boxes(masks), labels, masks, gt.iscrowd[things].clone())

    def evaluate(self, info: DistInfo | None = None) -> dict[str, Any]:
        """:meth:`DetectionAP.compute`."""
        return self.det.compute()
