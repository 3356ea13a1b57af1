"""Query models' raw outputs in: Hugging Face transformers and detectron2's Mask2Former / MaskFormer.

* transformers: ``Mask2FormerForUniversalSegmentation`` / ``MaskFormerForInstanceSegmentation`` /
  ``OneFormerForUniversalSegmentation`` return ``class_queries_logits`` ``(B, Q, K + 1)`` and
  ``masks_queries_logits`` ``(B, Q, h, w)`` (at a quarter of the padded input size).
* detectron2 (``facebookresearch/Mask2Former``, ``MaskFormer``): the segmentation head returns a dict with
  ``pred_logits`` ``(B, Q, K + 1)`` and ``pred_masks`` ``(B, Q, h, w)``.

Both number classes in the model's own order (detectron2's contiguous ids, i.e. the dataset's category order for
COCO): pass ``class_map=table.class_index_map("dataset")`` (or the order the model was trained with) to
:class:`~panoptic.fusion.maskformer.MaskFormerFusion`.
"""

from __future__ import annotations

from typing import Any

from ..queries import Queries
from .common import read, tensor

__all__ = ["from_detectron2_queries", "from_transformers_queries"]


def from_transformers_queries(outputs: Any) -> list[Queries]:
    """A transformers query model's output (batched) as one :class:`~panoptic.queries.Queries` per image.

    Args:
        outputs: Anything with ``class_queries_logits`` ``(B, Q, K + 1)`` and ``masks_queries_logits``
            ``(B, Q, h, w)`` (attributes or keys).

    Raises:
        ValueError: A missing field or wrong shapes (the message names the fix).

    Example:
        >>> import torch
        >>> out = {"class_queries_logits": torch.zeros(2, 5, 4), "masks_queries_logits": torch.zeros(2, 5, 8, 8)}
        >>> [len(q) for q in from_transformers_queries(out)]
        [5, 5]
    """
    what = "transformers output"
    return Queries.unbatch(tensor(read(outputs, "class_queries_logits", what), "class_queries_logits"),
                           tensor(read(outputs, "masks_queries_logits", what), "masks_queries_logits"))


def from_detectron2_queries(outputs: Any) -> list[Queries]:
    """detectron2 Mask2Former / MaskFormer head outputs (batched) as one :class:`~panoptic.queries.Queries`
    per image.

    Args:
        outputs: The head's dict with ``pred_logits`` ``(B, Q, K + 1)`` and ``pred_masks`` ``(B, Q, h, w)``
            (``aux_outputs`` is ignored).

    Raises:
        ValueError: A missing key or wrong shapes.
    """
    what = "detectron2 Mask2Former output"
    return Queries.unbatch(tensor(read(outputs, "pred_logits", what), "pred_logits"),
                           tensor(read(outputs, "pred_masks", what), "pred_masks"))
