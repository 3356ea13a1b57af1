"""Panoptic quality: the names of the former single module, kept importable.

The evaluator is split by job: the streaming metrics and their mergeable state in
:mod:`panoptic.evaluation.streaming`, the COCO-panoptic file reader/driver in
:mod:`panoptic.evaluation.files`, table formatting in :mod:`panoptic.evaluation.tables`.
"""

from __future__ import annotations

# The former module's other names stay importable from here for existing code; they are not API.
from .files import load_coco_pair, pq_compute, read_png_ids  # noqa: F401
from .streaming import ImageStats, PanopticQuality, intersection_matrix, match_segments  # noqa: F401
from .tables import format_pq_results

__all__ = [
    "PanopticQuality",
    "format_pq_results",
    "pq_compute",
]
