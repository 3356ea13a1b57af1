"""panoptic: panoptic segmentation with pluggable fusion strategies (UPSNet and its baselines)."""

from .categories import Category, CategoryTable
from .centre_offsets import CentreOffsets
from .fusion import CentreOffsetFusion, HeuristicFusion, PanopticFusion, UPSNetFusion
from .fusion.maskformer import MaskFormerFusion
from .queries import Queries
from .structures import Instances, PanopticResult

__version__ = "0.1.0"

__all__ = [
    "Category",
    "CategoryTable",
    "CentreOffsetFusion",
    "CentreOffsets",
    "HeuristicFusion",
    "Instances",
    "MaskFormerFusion",
    "PanopticFusion",
    "PanopticResult",
    "Queries",
    "UPSNetFusion",
    "__version__",
]
