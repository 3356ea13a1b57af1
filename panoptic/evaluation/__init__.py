"""Evaluation: panoptic quality (streaming and COCO-panoptic files), semantic mIoU, box/mask AP.

* :class:`PanopticQuality` / :func:`pq_compute`: PQ, SQ, RQ with panopticapi's exact rules and results
  (bit-identical to its single-process run). Streaming on in-memory results costs a few ms per
  1024x2048 image; the file evaluator is bound by PNG decoding (:mod:`panoptic.png`).
* :class:`SemanticIoU`: confusion-matrix mIoU of semantic maps.
* :class:`DetectionAP`: COCO box and mask AP of :class:`~panoptic.Instances` through pycocotools.
"""

from .detection import DetectionAP
from .pq import PanopticQuality, format_pq_results, load_coco_pair, match_segments, pq_compute, read_png_ids
from .semantic import SemanticIoU

__all__ = [
    "DetectionAP",
    "PanopticQuality",
    "SemanticIoU",
    "format_pq_results",
    "load_coco_pair",
    "match_segments",
    "pq_compute",
    "read_png_ids",
]
