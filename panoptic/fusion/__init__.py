"""Fusion strategies: semantic logits + instances -> panoptic results, usable with plain tensors."""

from .base import PanopticFusion
from .centre_offset import CentreOffsetFusion, encode_label_divisor
from .factory import FUSIONS, build_fusion
from .heuristic import HeuristicFusion
from .maskformer import MaskFormerFusion
from .paste import BoxRegions, box_regions, paste_masks, paste_masks_dense
from .pruning import PruningConfig, prune_instances
from .upsnet import PanopticTargets, UPSNetFusion

__all__ = [
    "FUSIONS",
    "BoxRegions",
    "CentreOffsetFusion",
    "HeuristicFusion",
    "MaskFormerFusion",
    "PanopticFusion",
    "PanopticTargets",
    "PruningConfig",
    "UPSNetFusion",
    "box_regions",
    "build_fusion",
    "encode_label_divisor",
    "paste_masks",
    "paste_masks_dense",
    "prune_instances",
]
