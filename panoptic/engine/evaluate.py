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

from typing import Any

import torch

from ..categories import CategoryTable
from ..data import CocoPanopticDataset
from ..fusion import PanopticFusion
from ..models import PanopticModel
from .data import eval_loader
from .distributed import DistInfo
from .evaluators import PanopticEvaluator, SemanticEvaluator
from .inference import inference_on_dataset

__all__ = [
    "evaluate",
]


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
def evaluate(model: PanopticModel, dataset: CocoPanopticDataset, table: CategoryTable, *, info: DistInfo | None = None,
             batch_size: int = 2, num_workers: int = 0, max_images: int | None = None,
             fusion: PanopticFusion | None = None) -> dict[str, Any]:
    """Panoptic and semantic metrics of ``model`` on ``dataset`` (all ranks take part when distributed).

    Args:
        model: A panoptic model; it is put in eval mode and left there.
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
    panoptic = PanopticEvaluator(table, fusion or model.fusion)
    semantic = SemanticEvaluator(table)
    batches = eval_loader(dataset, batch_size, info, num_workers, max_images)
    inference_on_dataset(model, dataset, batches, [panoptic, semantic])
    return summarize(panoptic.evaluate(info), semantic.evaluate(info))
