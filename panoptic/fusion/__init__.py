"""Fusion strategies: semantic logits + instances -> panoptic results, usable with plain tensors."""

from .base import PanopticFusion
from .centre_offset import (
    CentreOffsetFusion,
    encode_label_divisor,  # noqa: F401
)
from .factory import FUSIONS, build_fusion
from .heuristic import HeuristicFusion
from .maskformer import MaskFormerFusion
from .paste import (
    BoxRegions,  # noqa: F401
    box_regions,
    paste_masks,
    paste_masks_dense,
)
from .pruning import (
    PruningConfig,
    prune_instances,  # noqa: F401
)
from .upsnet import (
    PanopticTargets,  # noqa: F401
    UPSNetFusion,
)

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = [
    "FUSIONS",
    "CentreOffsetFusion",
    "HeuristicFusion",
    "MaskFormerFusion",
    "PanopticFusion",
    "PruningConfig",
    "UPSNetFusion",
    "box_regions",
    "build_fusion",
    "paste_masks",
    "paste_masks_dense",
]
