"""Evaluation hook: PQ / SQ / RQ (All, Things, Stuff) and semantic mIoU of a model on a COCO-panoptic split.

Each rank evaluates its share of the images. The panoptic metric's small exact state (per-image float
terms keyed by dataset index, integer counts; never the predictions) is gathered with
``all_gather_object`` and merged, so every rank returns the metrics of the whole set, equal bit for bit to
a one-process evaluation; the semantic confusion matrices are summed.
Predictions are compared at the images' original size: when the evaluation transform resized an image,
the panoptic prediction and the semantic argmax are resized back (nearest) and the untransformed ground
truth is used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..categories import CategoryTable
from ..constants import IGNORE_INDEX
from ..data import CocoPanopticDataset, PanopticTarget
from ..data.transforms import resize_panoptic
from ..evaluation import PanopticQuality, SemanticIoU
from ..fusion import PanopticFusion
from ..structures import PanopticResult
from .data import eval_loader
from .distributed import DistInfo, all_gather_objects, all_reduce_sum

__all__ = ["evaluate", "summarize"]


def _crop(result: PanopticResult, size: tuple[int, int]) -> PanopticResult:
    h, w = size
    if result.image_size == (h, w):
        return result
    return replace(result, segment_map=result.segment_map[:h, :w], unknown_mask=result.unknown_mask[:h, :w])


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def summarize(pq: dict[str, Any], sem: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics from :meth:`PanopticQuality.compute` and :meth:`SemanticIoU.compute` (fractions in [0, 1]).

    Returns:
        ``pq, sq, rq`` (All), ``pq_th, sq_th, rq_th`` (Things), ``pq_st, sq_st, rq_st`` (Stuff), ``miou``,
        ``pixel_acc``, ``num_images`` and ``per_class`` (dataset id -> ``{name, pq, sq, rq}``).
    """
    out: dict[str, Any] = {}
    for row, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for k in ("pq", "sq", "rq"):
            out[k + suffix] = float(pq[row][k])
    out["miou"] = float(sem["miou"])
    out["pixel_acc"] = float(sem["pixel_acc"])
    out["num_images"] = int(pq["num_images"])
    out["per_class"] = {str(cid): {"name": v["name"], "pq": v["pq"], "sq": v["sq"], "rq": v["rq"]}
                        for cid, v in pq["per_class"].items()}
    return out


@torch.no_grad()
def evaluate(model: nn.Module, dataset: CocoPanopticDataset, table: CategoryTable, *, info: DistInfo | None = None,
             batch_size: int = 2, num_workers: int = 0, max_images: int | None = None,
             fusion: PanopticFusion | None = None) -> dict[str, Any]:
    """Panoptic and semantic metrics of ``model`` on ``dataset`` (all ranks take part when distributed).

    Args:
        model: A panoptic model (eval-mode forward returns :class:`~panoptic.models.PanopticPrediction`); it
            is put in eval mode and left there.
        dataset: The split, with its evaluation transforms.
        table: The category table of model and data.
        info: Process info; default single process on the model's device.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers.
        max_images: Evaluate the first this many images only.
        fusion: Re-fuse the model's semantic logits and detections with this fusion instead of the model's.

    Returns:
        See :func:`summarize`.
    """
    device = next(model.parameters()).device
    info = info or DistInfo(device=device)
    model.eval()
    pq = PanopticQuality(table)
    sem = SemanticIoU(table.num_classes, names=list(table.names))
    for images, targets, indices in eval_loader(dataset, batch_size, info, num_workers, max_images):
        images = images.to(device, non_blocking=True)
        preds = model(model.normalize(images), image_sizes=[t.image_size for t in targets])
        for pred, target, index in zip(preds, targets, indices):
            result = pred.panoptic if fusion is None else fusion(pred.semantic_logits[None], [pred.instances])[0]
            _update(pq, sem, result.to("cpu"), pred.semantic_logits.argmax(0).cpu(), target, dataset, index)
    if info.distributed:  # exact merge of the per-rank states, in dataset-index order
        merged = PanopticQuality(table)
        for state in all_gather_objects(pq.export_state(), info):
            merged.merge_state(state)
        pq = merged
    sem.load_state_dict(all_reduce_sum(sem.state_dict(), info))
    return summarize(pq.compute(), sem.compute())


def _update(pq: PanopticQuality, sem: SemanticIoU, result: PanopticResult, sem_pred: torch.Tensor,
            target: PanopticTarget, dataset: CocoPanopticDataset, index: int) -> None:
    h, w = target.image_size
    if tuple(target.orig_size) == (h, w):
        gt = _crop(target.panoptic, (h, w))
        sem_gt = target.semantic[:h, :w].cpu()
    else:  # evaluated at a resized scale: compare at the original size
        result = resize_panoptic(result, tuple(target.orig_size))
        sem_pred = _nearest(sem_pred, tuple(target.orig_size))
        gt = dataset.load_panoptic(index)
        sem_gt = gt.semantic_map(void=IGNORE_INDEX)
    pq.update(gt.to("cpu"), result, key=index)
    sem.update(sem_pred, sem_gt)
