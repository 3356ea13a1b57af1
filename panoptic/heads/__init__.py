"""Model heads: UPSNet's semantic head, the Mask R-CNN instance head, and the PSP semantic model."""

from .instance import INSTANCE_LOSSES, InstanceHead, InstanceHeadConfig
from .psp import PSPConfig, PSPNet, PyramidPooling
from .semantic import SemanticHead, SemanticHeadConfig, SemanticOutput, box_target_crops, semantic_loss

__all__ = [
    "INSTANCE_LOSSES",
    "InstanceHead",
    "InstanceHeadConfig",
    "PSPConfig",
    "PSPNet",
    "PyramidPooling",
    "SemanticHead",
    "SemanticHeadConfig",
    "SemanticOutput",
    "box_target_crops",
    "semantic_loss",
]
