"""panoptic: panoptic segmentation with pluggable fusion strategies (UPSNet and its baselines)."""

from .categories import Category, CategoryTable
from .structures import Instances, PanopticResult

__version__ = "0.1.0"

__all__ = ["Category", "CategoryTable", "Instances", "PanopticResult", "__version__"]
