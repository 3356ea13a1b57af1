"""Dataset presets: the reference configs' values that depend on the dataset, one frozen dataclass each.

Example:
    >>> COCO.stuff_area_limit, CITYSCAPES.loss_weights.panoptic
    (4096, 0.5)
    >>> dataset_preset("cityscapes") is CITYSCAPES
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import LossWeights

__all__ = [
    "CITYSCAPES",
    "COCO",
    "CPU_SMALL",
    "DatasetPreset",
]


@dataclass(frozen=True)
class DatasetPreset:
    """What the UPSNet configs set per dataset.

    Attributes:
        name: Preset name (what ``dataset="..."`` strings in builder keyword arguments refer to).
        gap_context: Global-average-pooled context added to P5.
        semantic_layers: Deformable conv layers per level of the semantic head.
        stuff_area_limit: Stuff segments at most this many pixels are dropped by the default fusions.
        loss_weights: Weights of the eight losses.
    """

    name: str
    gap_context: bool
    semantic_layers: int
    stuff_area_limit: int
    loss_weights: LossWeights


COCO = DatasetPreset("coco", gap_context=True, semantic_layers=3, stuff_area_limit=4096,
                     loss_weights=LossWeights(semantic=0.2, semantic_roi=0.04, panoptic=0.1))
"""UPSNet's COCO configs: GAP context, 3-layer semantic head, semantic 0.2 / RoI 0.04 / panoptic 0.1."""

CITYSCAPES = DatasetPreset("cityscapes", gap_context=False, semantic_layers=2, stuff_area_limit=2048,
                           loss_weights=LossWeights(semantic=1.0, semantic_roi=0.0, panoptic=0.5))
"""UPSNet's Cityscapes configs: no GAP, 2 layers, semantic 1.0 / no RoI loss / panoptic 0.5."""

CPU_SMALL = DatasetPreset("cpu_small", gap_context=True, semantic_layers=2, stuff_area_limit=128,
                          loss_weights=LossWeights(semantic=1.0, semantic_roi=0.2, panoptic=0.5))
"""The ``*_cpu_small`` builders' values for ~192 px images: COCO's stuff area (4096 px on ~1e6 px images) scaled
down, and COCO's RoI/semantic ratio with the semantic weight at 1 as in the Cityscapes configs (a backbone trained
from scratch on a few thousand images needs the full semantic signal)."""

PRESETS: dict[str, DatasetPreset] = {p.name: p for p in (COCO, CITYSCAPES)}
"""The dataset presets by name."""


def dataset_preset(preset: DatasetPreset | str) -> DatasetPreset:
    """``preset`` itself, or the preset named so in :data:`PRESETS` (checkpoints and configs store names).

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    if isinstance(preset, DatasetPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown dataset preset {preset!r}; use one of {sorted(PRESETS)}.")
    return PRESETS[preset]
