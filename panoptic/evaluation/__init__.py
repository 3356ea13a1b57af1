"""Evaluation: panoptic metrics (streaming and COCO-panoptic files, sharded), semantic mIoU, box/mask AP.

* :class:`PanopticQuality` / :func:`pq_compute`: PQ, SQ, RQ with panopticapi's exact rules and results
  (bit-identical to its single-process run), plus PQ-dagger, Boundary PQ and Parsing Covering from the
  same intersection pass on request (:class:`MetricConfig`). The state merges exactly across shards
  (:mod:`panoptic.evaluation.shards`) and ``torch.distributed`` ranks.
* :class:`SemanticIoU`: confusion-matrix mIoU of semantic maps.
* :class:`DetectionAP`: COCO box and mask AP of :class:`~panoptic.Instances` through pycocotools.
"""

from .detection import DetectionAP
from .files import EmptyEvaluationError, PngFormatError, evaluate_files, pq_compute  # noqa: F401
from .semantic import SemanticIoU
from .streaming import (
    MergeError,  # noqa: F401
    MetricConfig,
    PanopticQuality,
)
from .tables import (
    format_pq_results,
    per_class_table,  # noqa: F401
)

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = ["DetectionAP", "MetricConfig", "PanopticQuality", "SemanticIoU", "format_pq_results", "pq_compute"]
