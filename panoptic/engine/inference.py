"""The one dataset loop: run a model's networks over batches and hand each image to evaluator objects.

As detectron2's ``inference_on_dataset`` with ``DatasetEvaluator.process/evaluate``: the loop runs
:meth:`~panoptic.models.PanopticModel.network` once per batch and builds an :class:`ImageOutput` per image (the
valid region of its semantic logits, its detections, its ground truth at the original size); every evaluator
accumulates what it measures from it. ``panoptic train``/``evaluate`` (:func:`~panoptic.engine.evaluate`) and
``panoptic compare`` (:func:`~panoptic.compare.evaluate.evaluate_network`) both use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..data import CocoPanopticDataset
from ..data.targets import PanopticTarget
from ..data.transforms import resize_panoptic
from ..models import PanopticModel
from ..structures import Instances, PanopticResult
from .distributed import DistInfo

__all__ = [
    "DatasetEvaluator",
    "ImageOutput",
    "inference_on_dataset",
]

Batch = tuple[torch.Tensor, Sequence[PanopticTarget], Sequence[int]]
"""``(images (B, 3, H, W) in [0, 1], targets, dataset indices)``."""


@dataclass
class ImageOutput:
    """One image's network outputs and ground truth, as evaluators receive them.

    Attributes:
        index: Dataset index.
        target: The transformed target.
        semantic_logits: ``(1, C, h, w)`` float logits of the valid region, at the network's input resolution.
        instances: Detections, boxes in input pixels.
        features: The image's FPN features ``(1, C, H/s, W/s)`` when the loop kept them, else ``None``.
        ground_truth: Panoptic ground truth at the original size, on the CPU.
        semantic_gt: ``(H0, W0)`` semantic ground truth at the original size (void = ``IGNORE_INDEX``).
        resized: Whether the evaluation transform resized the image (outputs are resized back to compare).
        input_size: ``(H, W)`` of the batch the network ran on.
        timed: Whether the network time of this image was recorded (past the warm-up).
    """

    index: int
    target: PanopticTarget
    semantic_logits: torch.Tensor
    instances: Instances
    features: dict[str, torch.Tensor] | None
    ground_truth: PanopticResult
    semantic_gt: torch.Tensor
    resized: bool
    input_size: tuple[int, int]
    timed: bool = False

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)`` from input pixels to original pixels."""
        (h0, w0), (h, w) = self.ground_truth.image_size, self.target.image_size
        return h0 / h, w0 / w

    def to_original(self, result: PanopticResult) -> PanopticResult:
        """A result at input resolution, on the CPU and resized (nearest) to the original size when needed."""
        result = result.to("cpu")
        return resize_panoptic(result, self.ground_truth.image_size) if self.resized else result

    def semantic_prediction(self) -> torch.Tensor:
        """``(H0, W0)`` argmax of the semantic logits at the original size, on the CPU."""
        pred = self.semantic_logits[0].max(0).indices.cpu()  # argmax(0); max runs several times faster on the CPU
        if not self.resized:
            return pred
        return F.interpolate(pred[None, None].float(), size=self.ground_truth.image_size,
                             mode="nearest-exact")[0, 0].long()


@dataclass
class InferenceStats:
    """What a loop saw.

    Attributes:
        num_images: Images processed.
        input_size: ``(H, W)`` of the first batch's input (``(0, 0)`` for none).
        network_ms: Network time of each timed batch (milliseconds).
    """

    num_images: int = 0
    input_size: tuple[int, int] = (0, 0)
    network_ms: list[float] = field(default_factory=list)


class DatasetEvaluator(Protocol):
    """Accumulates one kind of result over the images of a loop."""

    def process(self, image: ImageOutput) -> None:
        """Take one image's outputs into account."""
        ...

    def evaluate(self, info: DistInfo | None = None) -> Any:
        """The results over every processed image (merged across ranks when ``info`` is distributed)."""
        ...


def ground_truth(dataset: CocoPanopticDataset, index: int, target: PanopticTarget
                 ) -> tuple[PanopticResult, torch.Tensor, bool]:
    """``(panoptic GT at original size, semantic GT, resized?)``: the target's own maps cropped to the valid
    size, or, when the transform resized the image, the untransformed ground truth loaded again."""
    h, w = target.image_size
    if tuple(target.orig_size) == (h, w):
        gt = target.panoptic
        if gt.image_size != (h, w):
            gt = replace(gt, segment_map=gt.segment_map[:h, :w], unknown_mask=gt.unknown_mask[:h, :w])
        return gt.to("cpu"), target.semantic[:h, :w].cpu(), False
    gt = dataset.load_panoptic(index)
    return gt, gt.semantic_map(void=IGNORE_INDEX), True


def single_images(dataset: CocoPanopticDataset, n: int) -> Iterable[Batch]:
    """The first ``n`` items one at a time, unpadded (the model pads inside): ``(image[None], [target], [i])``."""
    for index in range(n):
        image, target = dataset[index]
        yield image[None], [target], [index]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_on_dataset(model: PanopticModel, dataset: CocoPanopticDataset, batches: Iterable[Batch],
                         evaluators: Sequence[DatasetEvaluator], *, keep_features: bool = False,
                         timing_warmup: int | None = None,
                         on_image: Callable[[], None] | None = None) -> InferenceStats:
    """Run ``model.network`` over ``batches`` and feed every image to every evaluator, in order.

    Args:
        model: The model, in eval mode (its first parameter's device is used).
        dataset: The dataset the batches come from (ground truth of resized images is loaded from it).
        batches: ``(images in [0, 1], targets, indices)``, e.g. :func:`~panoptic.engine.data.eval_loader` or
            :func:`single_images`.
        evaluators: Receive each :class:`ImageOutput`.

    Returns:
        The image count, first input size and network times.
        keep_features: Keep the FPN features in the outputs (oracle rows re-run the heads on them).
        timing_warmup: Record the network time of each batch after the first this many images; ``None``: no
            timing.
        on_image: Called after each image (progress).
    """
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    stats = InferenceStats()
    for images, targets, indices in batches:
        x = model.normalize(images.to(device, non_blocking=True))
        _sync(device)
        t0 = time.perf_counter()
        out = model.network(x, [t.image_size for t in targets], keep_features=keep_features)
        _sync(device)
        timed = timing_warmup is not None and stats.num_images >= timing_warmup
        if timed:
            stats.network_ms.append(1000 * (time.perf_counter() - t0))
        if not stats.num_images:
            stats.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        for b, (target, index) in enumerate(zip(targets, indices)):
            h, w = target.image_size
            feats = {k: v[b:b + 1] for k, v in out.features.items()} if out.features is not None else None
            gt, sem_gt, resized = ground_truth(dataset, index, target)
            image = ImageOutput(index, target, out.semantic_logits[b:b + 1, :, :h, :w].float(), out.instances[b],
                                feats, gt, sem_gt, resized, (int(x.shape[-2]), int(x.shape[-1])), timed)
            for ev in evaluators:
                ev.process(image)
            if on_image is not None:
                on_image()
        stats.num_images += len(indices)
    return stats

