"""torchvision: Mask R-CNN output dicts in.

``torchvision.models.detection.maskrcnn_resnet50_fpn(...)(images)`` returns one dict per image
(``models/detection/roi_heads.py``, ``transform.py``): ``boxes`` ``(N, 4)`` xyxy in the input image's pixels,
``labels`` ``(N,)`` int64 class indices with 0 = background (for the COCO weights, index = COCO category id:
torchvision's category list has ``__background__`` and ``N/A`` placeholders), ``scores`` ``(N,)`` and ``masks``
``(N, 1, H, W)`` mask **probabilities** already pasted into the image (``paste_masks_in_image``; torchvision's
own tools threshold them at 0.5). torchvision has no semantic head: the semantic logits come from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..categories import CategoryTable
from ..structures import Instances
from .common import map_labels, read, tensor, thing_lut

__all__ = ["from_torchvision"]

_FIX = ("Pass label_to_dataset_id= (a dict, or a list indexed by label) mapping the model's labels to the table's "
        "dataset ids; torchvision's COCO weights need none (label = COCO category id).")


def from_torchvision(output: Mapping[str, Any], table: CategoryTable, *,
                     label_to_dataset_id: Mapping[int, int] | Sequence[int] | None = None) -> Instances:
    """One image's Mask R-CNN output dict as :class:`~panoptic.structures.Instances`.

    The masks stay probabilities (``mask_kind="probabilities"``, full-image): ``HeuristicFusion`` keeps a pixel
    iff ``p >= 0.5`` (its ``mask_threshold``), as torchvision's tools do; ``UPSNetFusion`` reads ``logit(p)``.

    Args:
        output: ``{"boxes", "labels", "scores", "masks"}`` of one image.
        table: Category table of the dataset (e.g. COCO panoptic's).
        label_to_dataset_id: Model label -> dataset id; ``None``: the label is the dataset id (torchvision's
            COCO weights). Label 0 (background) is never a detection.

    Returns:
        Instances with labels as the table's thing indices.

    Raises:
        ValueError: A missing key, masks not ``(N, 1, H, W)``, or a label with no thing category in the table.
    """
    what = "torchvision output"
    boxes = tensor(read(output, "boxes", what), "boxes").float()
    scores = tensor(read(output, "scores", what), "scores").float()
    raw = tensor(read(output, "labels", what), "labels")
    masks = tensor(read(output, "masks", what), "masks")
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"torchvision masks must be (N, 1, H, W) probabilities, got {tuple(masks.shape)}.")
    if label_to_dataset_id is None:
        mapping = {c.id: c.id for c in table.categories if c.isthing}
    elif isinstance(label_to_dataset_id, Mapping):
        mapping = {int(k): int(v) for k, v in label_to_dataset_id.items()}
    else:
        mapping = {k: int(v) for k, v in enumerate(label_to_dataset_id) if k > 0}
    labels = map_labels(raw, thing_lut(mapping, table, "torchvision", _FIX), "torchvision", _FIX)
    return Instances(boxes, scores, labels.to(boxes.device), masks[:, 0], "image",
                     "probabilities" if masks.is_floating_point() else "binary")
