"""Panoptic models assembled by constructor injection, and named builders.

* :class:`UPSNet`: backbone + FPN, :class:`~panoptic.heads.SemanticHead`, :class:`~panoptic.heads.InstanceHead`
  and any :class:`~panoptic.fusion.PanopticFusion` for inference; trained with the eight UPSNet losses, the
  panoptic one through :class:`~panoptic.fusion.UPSNetFusion` on ground-truth boxes (paper §3.1-3.2).
* :class:`MaskRCNN`, :class:`MRCNNPSP`: the baseline of a separately trained Mask R-CNN and PSPNet combined
  by :class:`~panoptic.fusion.HeuristicFusion`.
* Builders (:data:`MODELS`, :func:`register_model`): ``upsnet_r50_fpn``, ``upsnet_c``, ``upsnet_cp``,
  ``mrcnn_psp`` and the CPU presets ``upsnet_cpu_small``, ``upsnet_c_cpu_small``, ``upsnet_cp_cpu_small``,
  ``mrcnn_psp_cpu_small``; dataset presets :data:`COCO`, :data:`CITYSCAPES` (:class:`DatasetPreset`).

Every model implements :class:`PanopticModel` (:class:`MaskRCNN`: :class:`TrainableModel`), the interface the
training engine, inference and ``panoptic compare`` use. Conventions shared by every model here:

* ``images`` are ``(B, 3, H, W)`` float, normalized with the backbone's statistics (every model has
  ``normalize(images01)``, see :meth:`panoptic.backbone.FPNBackbone.normalize`); sides that are not
  multiples of :data:`~panoptic.constants.SIZE_DIVISOR` are padded (bottom/right, zeros) inside the model, and
  outputs are cropped back.
* Training mode: ``model(images, targets)`` returns a dict of weighted scalar losses (sum them to train).
  ``targets`` are :class:`~panoptic.data.targets.PanopticTarget` (or anything with ``semantic (H, W)``,
  ``boxes (N, 4)``, ``labels (N,)``, ``masks (N, H, W)`` and optionally ``image_size``).
* Eval mode: ``model(images, image_sizes=None)`` returns one :class:`PanopticPrediction` per image.

Layout: ``types`` (shared types), ``protocol`` (the interface), ``upsnet``, ``mrcnn_psp`` (one file per
architecture), ``presets``, ``registry``, ``_builders`` (the registered builders).
"""

from . import _builders  # noqa: F401  (importing it registers the builders in MODELS)
from .mrcnn_psp import MRCNNPSP, MaskRCNN
from .presets import CITYSCAPES, COCO, CPU_SMALL, DatasetPreset
from .protocol import PanopticModel, TrainableModel
from .registry import MODELS, build_model, register_model
from .types import LossWeights, NetworkOutput, PanopticPrediction
from .upsnet import UPSNet

__all__ = [
    "CITYSCAPES",
    "COCO",
    "CPU_SMALL",
    "MODELS",
    "MRCNNPSP",
    "DatasetPreset",
    "LossWeights",
    "MaskRCNN",
    "NetworkOutput",
    "PanopticModel",
    "PanopticPrediction",
    "TrainableModel",
    "UPSNet",
    "build_model",
    "register_model",
]
