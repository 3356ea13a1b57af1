"""Model heads: UPSNet's semantic head, the Mask R-CNN instance head, and the PSP semantic model."""

from .instance import InstanceHead, InstanceHeadConfig
from .psp import PSPConfig, PSPNet
from .semantic import SemanticHead, SemanticHeadConfig

__all__ = [
    "InstanceHead",
    "InstanceHeadConfig",
    "PSPConfig",
    "PSPNet",
    "SemanticHead",
    "SemanticHeadConfig",
]
