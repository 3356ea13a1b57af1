"""``panoptic compare``: the paper's comparison (Tables 5, 6, 7 and Figure 4) as one command.

It trains MR-CNN-PSP, UPSNet-C and UPSNet with the same schedule and ``seeds`` training seeds (UPSNet-CP reuses
UPSNet's weights), or reuses cached checkpoints trained with the same config and seed, evaluates all of them on
the held-out split and writes, under the output folder:

* ``results.json``: ``{"models": {id: {"name", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st",
  "RQ_st", "mIoU", "AP_box", "AP_mask", "ms_per_image", "network_ms", "fusion_ms", "std": {metric: std over
  seeds}, "per_seed_PQ": [...]}}, "ablation": [{"row", "network", "pano_loss", "ica", "unknown", "gt_box",
  "gt_ica", "gt_seg", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "changed_px",
  "unknown_px", "dropped", "std", "per_seed_PQ"}], "runtime": [...], "claims": [{"claim", "a", "b", "pq_diff",
  "lo", "hi", "level", "images", "seeds", "holds", "text", "held_out": {"gap", "width", "seeds_only", "widths":
  {images: width}, "needed", "estimate", "seeds_estimate", "text"}}], "checks": {claim: bool}, "seeds": [...],
  "bootstrap": {...}, "training": {network: [one entry per seed]}, "num_images", "machine": {...}, "config":
  {...}, "wall_s"}`` (metrics are seed means; percentages, milliseconds, seconds; ``null`` for a metric that
  does not apply);
* ``main.md/.csv``, ``ablation.md/.csv``, ``runtime.md/.csv`` and ``report.md`` (all tables, the claims with
  their intervals);
* ``figure.png``: image | ground truth | combined method | UPSNet for the first held-out images (first seed);
* ``per_image.npz``: row key -> ``(S, N, C, 4)`` per-image ``tp, fp, fn, iou`` (the intervals' input, see
  :mod:`panoptic.compare.intervals`).

Use :func:`run_compare` with a :class:`CompareConfig` from Python.
"""

from .config import DISPLAY_NAMES, MODEL_IDS, CompareConfig  # noqa: F401
from .runner import (
    CompareResult,  # noqa: F401
    run_compare,
)

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = ["CompareConfig", "run_compare"]
