"""Data: COCO-panoptic dataset and writer, synthetic scenes, joint transforms.

* :mod:`~panoptic.data.synthetic`: deterministic synthetic scenes and datasets.
* :mod:`~panoptic.data.coco`: :class:`CocoPanopticDataset`, validated up front.
* :mod:`~panoptic.data.writer`: COCO-panoptic PNG + JSON writer (what panopticapi reads).
* :mod:`~panoptic.data.transforms`: resize / flip / pad on image and ground truth; ``collate``.
* :mod:`~panoptic.data.targets`: :class:`PanopticTarget` derived from a panoptic ground truth.
* :mod:`~panoptic.data.cityscapes`: the ``cityscapesscripts`` conversion path.
"""

from .cityscapes import cityscapes_image_file, cityscapes_panoptic, cityscapes_panoptic_paths
from .coco import CocoPanopticDataset, PanopticDataError
from .synthetic import (
    SceneConfig,
    SyntheticScene,
    generate_scene,
    synthetic_categories,
    write_synthetic_dataset,
)
from .targets import IGNORE_INDEX, PanopticTarget, build_target, masks_to_boxes, pad_target
from .transforms import (
    Compose,
    PadToMultiple,
    RandomHorizontalFlip,
    ResizeShortSide,
    Sample,
    Transform,
    build_transforms,
    collate,
)
from .writer import CocoPanopticWriter, write_coco_predictions

__all__ = [
    "IGNORE_INDEX",
    "CocoPanopticDataset",
    "CocoPanopticWriter",
    "Compose",
    "PadToMultiple",
    "PanopticDataError",
    "PanopticTarget",
    "RandomHorizontalFlip",
    "ResizeShortSide",
    "Sample",
    "SceneConfig",
    "SyntheticScene",
    "Transform",
    "build_target",
    "build_transforms",
    "cityscapes_image_file",
    "cityscapes_panoptic",
    "cityscapes_panoptic_paths",
    "collate",
    "generate_scene",
    "masks_to_boxes",
    "pad_target",
    "synthetic_categories",
    "write_coco_predictions",
    "write_synthetic_dataset",
]
