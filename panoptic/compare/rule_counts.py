"""What each ablation row changes: pixel and instance counts over the held-out images.

A row that scores the same PQ as the row above may still change pixels (in ways that cancel), or change
nothing at all (the benchmark never exercises its rule). To tell these apart, :class:`RuleCounter` counts per
row, summed over the held-out images:

* ``changed_px``: pixels whose class (category, void or unknown) differs from the previous row fed by the same
  network, on the same image. Between "+ panoptic loss" and "+ ICA" these are the pixels instance class
  assignment reassigns; between "+ ICA" and "+ unknown" the pixels the unknown prediction changes. The first
  row of a network has no row above it (0).
* ``unknown_px``: pixels predicted unknown.
* ``dropped``: input instances that end with no segment (removed by pruning, or left without pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..structures import PanopticResult
from .rows import Row

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

RULE_COUNTS = ("changed_px", "unknown_px", "dropped")
"""The counts, in table order."""


@dataclass
class RuleCounts:
    """One row's counts, summed over images (see the module docs)."""

    changed_px: int = 0
    unknown_px: int = 0
    dropped: int = 0


def class_map(result: PanopticResult) -> torch.Tensor:
    """``(H, W)`` int64: each pixel's contiguous category, ``-1`` void, ``-2`` predicted unknown."""
    seg = result.segment_map.long()
    lut = torch.cat([torch.tensor([-1], dtype=torch.int64), result.category.long().cpu()])
    out = lut[seg.cpu()]
    out[result.unknown_mask.cpu()] = -2
    return out


class RuleCounter:
    """Counts per row, fed one result at a time by :func:`~panoptic.compare.evaluate.evaluate_network`.

    Args:
        rows: All rows, in evaluation order; a row's "previous row" is the one before it with the same
            network, among the ablation rows (main rows are not compared).
    """

    def __init__(self, rows: Sequence[Row]) -> None:
        self.counts = {r.key: RuleCounts() for r in rows}
        self._previous: dict[str, str] = {}
        last: dict[str, str] = {}
        for r in rows:
            if not r.flags:
                continue
            if r.network in last:
                self._previous[r.key] = last[r.network]
            last[r.network] = r.key
        self._image: tuple[str, int] | None = None
        self._maps: dict[str, torch.Tensor] = {}

    def __call__(self, index: int, row: Row, result: PanopticResult, num_instances: int) -> None:
        """Count one row's result on image ``index`` (``num_instances``: detections given to its fusion)."""
        if self._image != (row.network, index):  # a new image: forget the previous image's maps
            self._image, self._maps = (row.network, index), {}
        c = self.counts[row.key]
        cmap = class_map(result)
        prev = self._maps.get(self._previous.get(row.key, ""))
        if prev is not None:
            c.changed_px += int((cmap != prev).sum())
        self._maps[row.key] = cmap
        c.unknown_px += int(result.unknown_mask.sum())
        kept = torch.unique(result.source[result.isthing & (result.source >= 0)]).numel()
        c.dropped += max(0, num_instances - kept)
