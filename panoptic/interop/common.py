"""What the framework adapters share: reading plain attributes, label lookup tables, merged "things" channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..categories import CategoryTable
from ..structures import Instances

__all__ = ["expand_things_channel"]


class FusionInputs(NamedTuple):
    """One image's fusion inputs, as an adapter makes them.

    Attributes:
        semantic_logits: ``(C', H, W)`` float semantic logits in the layout the adapter documents, or ``None``
            when the framework output has none. Batch them with ``torch.stack`` (or ``[None]``) for a fusion.
        instances: The detections, labels as thing indices of the table.
    """

    semantic_logits: torch.Tensor | None
    instances: Instances


def read(obj: Any, name: str, what: str) -> Any:
    """``obj.name`` or ``obj[name]``; a ``ValueError`` naming ``what`` was expected if it has neither."""
    if isinstance(obj, Mapping):
        if name in obj:
            return obj[name]
    elif hasattr(obj, name):
        return getattr(obj, name)
    raise ValueError(f"{what} has no {name!r} (got a {type(obj).__name__}); pass the framework's output object "
                     f"or anything with a {name!r} attribute or key.")


def read_optional(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``, ``None`` if absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def tensor(x: Any, what: str) -> torch.Tensor:
    """A tensor from a tensor, numpy array or nested list (``ValueError`` naming ``what`` otherwise)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    t = getattr(x, "tensor", None)  # detectron2's Boxes
    if isinstance(t, torch.Tensor):
        return t
    raise ValueError(f"{what} must be a tensor (or a numpy array), got {type(x).__name__}.")


def thing_lut(label_to_dataset_id: Mapping[int, int], table: CategoryTable, framework: str, fix: str) -> torch.Tensor:
    """``(L,)`` int64: framework label -> thing index of ``table`` (``-1``: a label with no thing in the table).

    Raises:
        ValueError: A mapped dataset id is not in the table, or is a stuff category there.
    """
    size = max((int(k) for k in label_to_dataset_id), default=-1) + 1
    lut = torch.full((max(size, 0),), -1, dtype=torch.int64)
    for label, dataset_id in label_to_dataset_id.items():
        if int(label) < 0:
            raise ValueError(f"{framework} label {label} is negative; labels are 0-based class indices. {fix}")
        c = table.to_contiguous(int(dataset_id))
        if not table.isthing(c):
            raise ValueError(f"{framework} label {label} maps to dataset id {dataset_id}, a stuff category in the "
                             f"category table; instances must be things. {fix}")
        lut[int(label)] = c - table.num_stuff
    return lut


def map_labels(labels: torch.Tensor, lut: torch.Tensor, framework: str, fix: str) -> torch.Tensor:
    """``labels`` through ``lut`` (see :func:`thing_lut`); a label it does not map raises, naming the labels."""
    labels = labels.long().cpu()
    if labels.numel() == 0:
        return labels
    bad = (labels < 0) | (labels >= lut.numel())
    out = lut[labels.clamp(0, max(lut.numel() - 1, 0))] if lut.numel() else torch.full_like(labels, -1)
    bad |= out < 0
    if bool(bad.any()):
        raise ValueError(f"{framework} labels {sorted(set(labels[bad].tolist()))[:10]} have no thing category in the "
                         f"category table. {fix}")
    return out


def expand_things_channel(logits: torch.Tensor, table: CategoryTable, things_channel: int,
                          stuff_channels: Sequence[int] | None = None) -> torch.Tensor:
    """``(C, H, W)`` stuff-first logits from a layout with one merged "things" channel.

    detectron2's and mmdetection's Panoptic FPN semantic heads predict the stuff classes plus *one* channel
    for all things (detectron2: channel 0, mmdet: the last one). Here every thing channel gets a copy of that
    logit, so the result has the table's layout (stuff first, then things).

    * For :class:`~panoptic.fusion.HeuristicFusion` this is exact where it matters: the heuristic only asks
      whether a pixel's argmax is a stuff class or "a thing class", and on a tie between the things logit and a
      stuff logit the stuff class wins (first maximum), as in mmdetection (stuff channels first). detectron2
      (things channel first) leaves such a pixel void: use ``semantic_layout="detectron2"`` of
      ``HeuristicFusion`` with the merged layout itself to reproduce that.
    * For :class:`~panoptic.fusion.UPSNetFusion` it is an **approximation**: UPSNet crops the semantic logit of
      each instance's own class, and the merged layout has only one logit for all thing classes, so every
      instance gets the merged things logit (and the "semantic" class assignment cannot tell thing classes
      apart: use ``class_assignment="heuristic"`` or ``"detector"``).
    * Stuff channels are put in the table's stuff order, and the fusions break ties between equal stuff logits by
      that order (first maximum). The frameworks break them by their own channel order, so tied stuff logits
      give the framework's class only when both orders agree (they do under the default conventions,
      :meth:`~panoptic.interop.Detectron2Metadata.from_table` and :meth:`~panoptic.interop.MMDetClasses.from_table`).

    Args:
        logits: ``(S + 1, H, W)`` float: ``S = table.num_stuff`` stuff channels and one things channel.
        table: Category table.
        things_channel: Index of the merged things channel in ``logits`` (0 for detectron2, ``-1``/``S`` for mmdet).
        stuff_channels: For each stuff category of ``table`` (in table order) its channel in ``logits``;
            default: the channels other than ``things_channel``, in order.

    Returns:
        ``(C, H, W)``, ``C = table.num_classes``, a new tensor.

    Example:
        >>> table = CategoryTable.from_coco([{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1},
        ...                                  {"id": 3, "isthing": 0}])
        >>> expand_things_channel(torch.tensor([[[5.0]], [[7.0]]]), table, things_channel=0)[:, 0, 0]
        tensor([7., 5., 5.])
    """
    ns = table.num_stuff
    if logits.ndim != 3 or logits.shape[0] != ns + 1:
        raise ValueError(f"logits with one merged things channel must be (S + 1, H, W) with S = {ns} stuff classes, "
                         f"got {tuple(logits.shape)}.")
    t = things_channel % (ns + 1)
    if stuff_channels is None:
        stuff_channels = [k for k in range(ns + 1) if k != t]
    stuff = list(stuff_channels)
    if len(stuff) != ns or sorted([*stuff, t]) != list(range(ns + 1)):
        raise ValueError(f"stuff_channels must list the {ns} channels other than the things channel {t}, each once; "
                         f"got {stuff}.")
    index = torch.tensor(stuff + [t] * table.num_things, dtype=torch.int64, device=logits.device)
    return logits.index_select(0, index)
