"""Fusion strategies: semantic logits + instances -> panoptic results, usable with plain tensors."""

from .base import PanopticFusion
from .paste import BoxRegions, box_regions, paste_masks, paste_masks_dense

__all__ = ["BoxRegions", "PanopticFusion", "box_regions", "paste_masks", "paste_masks_dense"]
