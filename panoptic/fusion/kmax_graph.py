"""deeplab2's kMaX-DeepLab rules over a padded batch, with static shapes (exportable, no host syncs).

Both rules keep every slot (no data-dependent selection), so the slots reach the graph padded to the batch's
largest ``Q`` with a validity mask. The mask resize (``align_corners=True``) runs outside, as for the other query
flavours. ``"kmax"`` (pixelwise) is per pixel end to end and lives here whole: rejected slots, each pixel's slot
and its confidence, the area limits and the segment numbering. ``"kmax_maskwise"`` pastes binary masks in order,
each kept or not by how much of it is still free: sequential like the heuristic's paste (each decision depends
on the pixels pasted before it), so the paste runs outside and hands :class:`KMaxMaskwiseGraph` the owner map;
the area limits, the stuff merge and the numbering live in the graph. Their results equal the eager fusion's
exactly (``tests/test_export_kmax.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from .maskformer_graph import number_segments

__all__: list[str] = []  # machinery of panoptic.export (see docs/concepts/ops.md)

#: The logit deeplab2 gives the pixels of a rejected slot (it still takes part in the softmax over slots).
KMAX_REJECTED_LOGIT = -99999.0


class _KMaxSegments(nn.Module):
    """deeplab2's area limits and the segments, shared by both kMaX graphs.

    Args:
        isthing: ``(C,)`` bool: the category is a thing (stuff slots of one category merge).
        thing_area_limit: A thing slot's segment is kept iff its area ``>= thing_area_limit`` (0 keeps all).
        stuff_area_limit: A stuff category's merged segment is kept iff its area ``>= stuff_area_limit``.
    """

    def __init__(self, isthing: torch.Tensor, thing_area_limit: int, stuff_area_limit: int) -> None:
        super().__init__()
        self.register_buffer("isthing", isthing.bool().clone(), persistent=False)
        self.num_classes = int(isthing.numel())
        self.thing_area_limit = int(thing_area_limit)
        self.stuff_area_limit = int(stuff_area_limit)

    def segments(self, owner: torch.Tensor, category: torch.Tensor, score: torch.Tensor,
                 valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's outputs from each pixel's slot (``(B, H, W)``, ``N`` = none) and the slots' ``(B, N)``
        category, score and validity (see :meth:`KMaxGraph.forward`)."""
        b, n = category.shape
        thing = self.isthing[category]
        flat = owner.reshape(b, -1)
        slot_area = torch.zeros(b, n + 1, dtype=torch.int64, device=owner.device).scatter_add_(
            1, flat, torch.ones_like(flat))[:, :n]
        ok = valid & (slot_area > 0)
        if self.thing_area_limit > 0:
            ok = ok & (~thing | (slot_area >= self.thing_area_limit))
        if self.stuff_area_limit > 0:  # per category: the stuff slots of one class are one segment
            same_stuff = (category[:, :, None] == category[:, None, :]) & ~thing[:, None, :] & valid[:, None, :]
            class_area = (same_stuff.long() * slot_area[:, None, :]).sum(2)
            ok = ok & (thing | (class_area >= self.stuff_area_limit))
        segment_map, area, pos = number_segments(owner, ok, category, ~thing, self.num_classes)
        return segment_map, torch.zeros_like(segment_map, dtype=torch.bool), category, score.float(), area, pos


class KMaxGraph(_KMaxSegments):
    """deeplab2's pixelwise rule (``max_deeplab.py``) over a padded batch of slots.

    Args:
        isthing: ``(C,)`` bool per category.
        mask_threshold: A pixel is confident iff its largest softmax over slots is ``> mask_threshold``.
        thing_area_limit: See :class:`_KMaxSegments`.
        stuff_area_limit: See :class:`_KMaxSegments`.
    """

    def __init__(self, isthing: torch.Tensor, mask_threshold: float, thing_area_limit: int,
                 stuff_area_limit: int) -> None:
        super().__init__(isthing, thing_area_limit, stuff_area_limit)
        self.mask_threshold = float(mask_threshold)

    def forward(self, logits: torch.Tensor, keep: torch.Tensor, category: torch.Tensor, score: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch.

        Args:
            logits: ``(B, N, H, W)`` float32 slot mask logits at the output size (``N >= 1``; padding slots hold
                anything finite).
            keep: ``(B, N)`` bool: the slot's best class passes ``object_mask_threshold`` (``False`` for padding).
            category: ``(B, N)`` int64 contiguous category of each slot's best class.
            score: ``(B, N)`` float32 its probability.
            valid: ``(B, N)`` bool: the slot is a real one (``False`` for padding).

        Returns:
            ``segment_map`` ``(B, H, W)`` int32 (0 void; segments numbered by their first slot), ``unknown_mask``
            ``(B, H, W)`` bool (all ``False``), and per slot ``(B, N)`` each: ``category`` int64, ``score``
            float32, ``area`` int64 (0 = no segment) and ``slot`` int64.
        """
        n = logits.shape[1]
        live = valid[:, :, None, None]
        # padding slots take no share of the softmax (exp(-inf) = 0): the real slots' values stay bit-exact
        real = torch.where(live, logits, -torch.inf)
        detected = torch.where(keep[:, :, None, None], logits,
                               torch.where(live, torch.full((), KMAX_REJECTED_LOGIT), -torch.inf))
        top, first = detected.max(1)  # first: argmax's index (the first slot on ties), faster on the CPU
        confident = (torch.softmax(detected, 1).amax(1) > self.mask_threshold) & (real.amax(1) == top)
        painted = confident & keep.any(1)[:, None, None]  # deeplab2: no kept slot, no segment
        owner = torch.where(painted, first, n)
        return self.segments(owner, category, score, valid)


class KMaxMaskwiseGraph(_KMaxSegments):
    """deeplab2's maskwise rule after its sequential paste: area limits, stuff merge and numbering.

    Args: as :class:`_KMaxSegments`.
    """

    def forward(self, owner: torch.Tensor, category: torch.Tensor, score: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch of pasted slots.

        Args:
            owner: ``(B, H, W)`` int64 pasted slot at each pixel (its position in paste order), ``N`` for none.
            category: ``(B, N)`` int64 contiguous category of each slot, in paste order.
            score: ``(B, N)`` float32 its class probability.
            valid: ``(B, N)`` bool: the slot is a real one (``False`` for padding).

        Returns:
            As :meth:`KMaxGraph.forward`, slots in paste order.
        """
        return self.segments(owner, category, score, valid)
