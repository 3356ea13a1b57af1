"""Data: COCO-panoptic dataset and writer, synthetic scenes, joint transforms.

* :mod:`~panoptic.data.synthetic`: deterministic synthetic scenes and datasets.
* :mod:`~panoptic.data.coco`: :class:`CocoPanopticDataset`, validated up front.
* :mod:`~panoptic.data.writer`: COCO-panoptic PNG + JSON writer (what panopticapi reads).
* :mod:`~panoptic.data.transforms`: resize / flip / pad on image and ground truth; ``collate``.
* :mod:`~panoptic.data.targets`: :class:`PanopticTarget` derived from a panoptic ground truth.
* :mod:`~panoptic.data.cityscapes`: the ``cityscapesscripts`` conversion path.
"""

from .cityscapes import cityscapes_image_file, cityscapes_panoptic
from .coco import CocoPanopticDataset, PanopticDataError
from .synthetic import (
    SceneConfig,
    SyntheticScene,  # noqa: F401
    generate_scene,
    synthetic_categories,
    write_synthetic_dataset,
)

# compare/ imports PanopticTarget from here (kept importable, not API: its home is data.targets).
from .targets import PanopticTarget  # noqa: F401
from .transforms import build_transforms, collate
from .writer import CocoPanopticWriter, write_coco_predictions

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = [
    "CocoPanopticDataset",
    "CocoPanopticWriter",
    "PanopticDataError",
    "SceneConfig",
    "build_transforms",
    "cityscapes_image_file",
    "cityscapes_panoptic",
    "collate",
    "generate_scene",
    "synthetic_categories",
    "write_coco_predictions",
    "write_synthetic_dataset",
]
