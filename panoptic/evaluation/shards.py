"""Sharded evaluation: per-shard statistics files and their exact merge.

``panoptic evaluate --shard i/n --stats OUT`` evaluates the images at positions ``p % n == i`` of the GT
JSON and writes :func:`write_stats`; ``panoptic evaluate --merge STATS...`` calls :func:`merge_stats`, which
checks that the shards come from the same ground truth and metric options and cover every image exactly
once, and returns the merged :class:`~panoptic.evaluation.streaming.PanopticQuality`, equal bit for bit to
a one-process run (float terms are replayed in GT order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..categories import CategoryTable
from .streaming import MergeError, MetricConfig, PanopticQuality

# The file format of `panoptic evaluate --stats/--merge`; users run the command.
__all__: list[str] = []

FORMAT = "panoptic-eval-stats/1"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n`` (0-based, as Slurm's ``$SLURM_ARRAY_TASK_ID``)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}.") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= i < n (shards are 0-based: 0/{max(n, 1)} .. {max(n, 1) - 1}/"
                         f"{max(n, 1)}).")
    return i, n


def write_stats(path: str | os.PathLike, metric: PanopticQuality, info: Mapping[str, Any],
                categories: Sequence[Mapping[str, Any]]) -> None:
    """Write a shard's statistics (atomically): the metric's exact state plus the run's identity.

    Args:
        path: The JSON file.
        metric: The shard's metric (keys = GT JSON positions).
        info: ``{"num_total", "fingerprint", "shard"}`` from :func:`~panoptic.evaluation.files.evaluate_files`.
        categories: The GT JSON ``categories`` (to rebuild the table at merge time).
    """
    doc = {"format": FORMAT, **dict(info), "gt_categories": list(categories), "state": metric.export_state()}
    atomic_write_bytes(Path(path), json.dumps(doc, separators=(",", ":")).encode())


def read_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Load a statistics file written by :func:`write_stats`.

    Raises:
        MergeError: Not such a file.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise MergeError(f"{path} is not a statistics file ({e}); pass the files written by --stats.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MergeError(f"{path} is not a {FORMAT} statistics file; pass the files written by --stats.")
    return doc


def merge_stats(paths: Sequence[str | os.PathLike]) -> PanopticQuality:
    """Merge shard statistics into one metric, checking that they cover every image exactly once.

    Raises:
        MergeError: No file, different ground truths or options, or an image missing or present twice
            (the message names the images and shards).
    """
    if not paths:
        raise MergeError("--merge needs at least one statistics file.")
    docs = [(str(p), read_stats(p)) for p in paths]
    first_path, first = docs[0]
    for p, d in docs[1:]:
        for field in ("fingerprint", "num_total"):
            if d[field] != first[field]:
                raise MergeError(f"{p} and {first_path} were computed on different ground truths ({field} differs); "
                                 "merge shards of one run.")
    table = CategoryTable.from_coco(first["gt_categories"])
    config = MetricConfig(**{**first["state"]["config"], "metrics": tuple(first["state"]["config"]["metrics"])})
    metric = PanopticQuality(table, category_order=[c["id"] for c in first["gt_categories"]], config=config)
    owner: dict[int, str] = {}
    for p, d in docs:
        for k in d["state"]["keys"]:
            if k in owner:
                raise MergeError(f"image {k} (position in the GT JSON) is in both {owner[k]} and {p}; each image must "
                                 "be in one shard (was a shard passed twice, or two runs with different --shard n?).")
            owner[k] = p
        metric.merge_state(d["state"])
    missing = sorted(set(range(first["num_total"])) - set(owner))
    if missing:
        shards = sorted({tuple(d["shard"]) for _, d in docs})
        raise MergeError(f"{len(missing)} of {first['num_total']} images are in no statistics file (GT positions "
                         f"{missing[:10]}); shards given: {[f'{i}/{n}' for i, n in shards]}. Run the missing shards.")
    return metric
