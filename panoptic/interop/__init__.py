"""Other frameworks' outputs in and out: detectron2, mmdetection 3.x and torchvision, without hand conversion.

Each adapter reads plain attributes (or dict keys) of the framework's output objects, so no framework is
imported: a detectron2 ``Instances``, an mmdet ``DetDataSample`` or a torchvision output dict is enough, and so
are look-alikes built from tensors. Category ids are mapped through the framework's own metadata (detectron2's
``thing_dataset_id_to_contiguous_id``, mmdet's ``classes``, torchvision's label -> dataset id) and a
:class:`~panoptic.categories.CategoryTable`.

* In: :func:`from_detectron2`, :func:`from_mmdet`, :func:`from_torchvision` give a :class:`FusionInputs`
  (semantic logits in a layout the fusions read, and :class:`~panoptic.structures.Instances`).
* Out: :func:`to_detectron2` gives ``(panoptic_seg, segments_info)``, :func:`to_mmdet` mmdet's ``pan_results``;
  :func:`from_detectron2_panoptic` and :func:`from_mmdet_panoptic` read them back.
* Query models (MaskFormer, Mask2Former, OneFormer): :func:`from_transformers_queries`,
  :func:`from_detectron2_queries` give :class:`~panoptic.queries.Queries` for
  :class:`~panoptic.fusion.maskformer.MaskFormerFusion`.
* Semantic layouts with one merged "things" channel: :func:`expand_things_channel`.
"""

from .common import (
    FusionInputs,  # noqa: F401
    expand_things_channel,
)
from .detectron2 import Detectron2Metadata, from_detectron2, from_detectron2_panoptic, to_detectron2
from .mmdet import MMDetClasses, from_mmdet, from_mmdet_panoptic, to_mmdet
from .queries import from_detectron2_queries, from_transformers_queries
from .torchvision import from_torchvision

# Imports marked `noqa: F401` stay importable for existing code but are not API (not in __all__).
__all__ = [
    "Detectron2Metadata",
    "MMDetClasses",
    "expand_things_channel",
    "from_detectron2",
    "from_detectron2_panoptic",
    "from_detectron2_queries",
    "from_mmdet",
    "from_mmdet_panoptic",
    "from_torchvision",
    "from_transformers_queries",
    "to_detectron2",
    "to_mmdet",
]
