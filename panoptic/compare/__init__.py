"""``panoptic compare``: the paper's comparison (Tables 5, 6, 7 and Figure 4) as one command.

It trains MR-CNN-PSP, UPSNet-C and UPSNet with the same schedule (UPSNet-CP reuses UPSNet's weights), or reuses
cached checkpoints trained with the same config, evaluates all of them on the held-out split and writes, under
the output folder:

* ``results.json``: ``{"models": {id: {"name", "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st",
  "RQ_st", "mIoU", "AP_box", "AP_mask", "ms_per_image", "network_ms", "fusion_ms"}}, "ablation": [{"row",
  "network", "pano_loss", "ica", "unknown", "gt_box", "gt_ica", "gt_seg", "PQ", "SQ", "RQ", "PQ_th", "SQ_th",
  "RQ_th", "PQ_st", "SQ_st", "RQ_st"}], "runtime": [...], "checks": {claim: bool}, "training": {...},
  "num_images", "machine": {...}, "config": {...}, "wall_s"}`` (percentages, milliseconds, seconds; ``null``
  for a metric that does not apply);
* ``main.md/.csv``, ``ablation.md/.csv``, ``runtime.md/.csv`` and ``report.md`` (all tables);
* ``figure.png``: image | ground truth | combined method | UPSNet for the first held-out images.

Use :func:`run_compare` with a :class:`CompareConfig` from Python.
"""

from .config import DISPLAY_NAMES, MODEL_IDS, CompareConfig
from .runner import CompareResult, run_compare

__all__ = ["DISPLAY_NAMES", "MODEL_IDS", "CompareConfig", "CompareResult", "run_compare"]
