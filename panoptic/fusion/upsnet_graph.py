"""UPSNet's per-pixel inference path over a padded batch, with static shapes (exportable, no host syncs).

:class:`UPSNetFusion` reduces the instance channels box by box (:func:`panoptic._ops.upsnet_keys`); this module
states the same rule densely over a padded batch so that ``torch.export`` can trace it: every shape follows
from the inputs' shapes, and nothing reads a value on the host. It is the graph of
:func:`panoptic.export.export_fusion`; its results equal the eager ones exactly (``tests/test_export.py``).

What stays outside (see ``docs/concepts/ops.md``, "Batching and export"): the pruning (score threshold, NMS,
top-k, same-class overlap: data-dependent selections) and the pasting of each kept ROI mask into its box (a
bilinear resize to a per-instance size, which a static graph cannot reproduce bit for bit).
"""

from __future__ import annotations

import torch
from torch import nn

from .._ops.upsnet import keys_from_maxima

# The traced form of UPSNetFusion that panoptic.export compiles; use export_fusion.
__all__: list[str] = []


class UPSNetGraph(nn.Module):
    """Panoptic argmax, class assignment, stuff area and segment numbering of a padded batch.

    Args:
        isthing: ``(C,)`` bool, the category table's thing flags (stuff channels first).
        unknown: Include the unknown channel ``U``.
        class_assignment: ``"heuristic"``, ``"detector"`` or ``"semantic"`` (see :class:`UPSNetFusion`).
        assignment_threshold: Strict frequency threshold of the heuristic.
        stuff_area_limit: Stuff categories with a total area below it become void.
    """

    def __init__(self, isthing: torch.Tensor, unknown: bool, class_assignment: str, assignment_threshold: float,
                 stuff_area_limit: int) -> None:
        super().__init__()
        self.register_buffer("isthing", isthing.bool().clone(), persistent=False)
        self.num_stuff = int((~isthing).sum())
        self.num_classes = int(isthing.numel())
        self.unknown = unknown
        self.class_assignment = class_assignment
        self.assignment_threshold = float(assignment_threshold)
        self.stuff_area_limit = int(stuff_area_limit)

    def forward(self, sem: torch.Tensor, crop: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                scores: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch.

        Args:
            sem: ``(B, C, H, W)`` float semantic logits at output size.
            crop: ``(B, N, 4)`` int64 half-open crop boxes ``(y0, y1, x0, x1)`` of the kept instances.
            masks: ``(B, N, H, W)`` float mask logits pasted into their paste boxes, 0 elsewhere.
            labels: ``(B, N)`` int64 thing indices.
            scores: ``(B, N)`` float detection scores.
            valid: ``(B, N)`` bool, ``False`` for padding (``N >= 1``: pad an empty batch with one slot).

        Returns:
            ``segment_map`` ``(B, H, W)`` int32 (0 void, segments numbered in candidate order),
            ``unknown_mask`` ``(B, H, W)`` bool, and per candidate (the ``Nst`` stuff classes, then the ``N``
            slots), ``(B, Nst + N)`` each: ``category`` int64, ``score`` float32 (NaN for stuff),
            ``area`` int64 (0 = no segment) and ``slot`` int64 (the instance slot, -1 for stuff).
        """
        b, _, h, w = sem.shape
        n = crop.shape[1]
        nst = self.num_stuff
        dev = sem.device
        unk = nst + n
        key = self._panoptic_argmax(sem, crop, masks, labels, valid)
        flat = key.reshape(b, h * w)
        ch_area = torch.zeros(b, unk + 1, dtype=torch.int64, device=dev).scatter_add_(1, flat, torch.ones_like(flat))
        category, target, channel_area = self._assign(sem, flat, ch_area, labels)
        label = self._void_small_stuff(target, channel_area)
        void = torch.full((b, 1), -1, dtype=torch.int64, device=dev)
        slot = torch.cat([label, void], 1).gather(1, flat) + 1  # candidate + 1, 0 = void
        area = torch.zeros(b, unk + 1, dtype=torch.int64, device=dev).scatter_add_(1, slot, torch.ones_like(slot))
        area = area[:, 1:]
        keep = (area > 0).long()
        new_id = torch.cat([torch.zeros(b, 1, dtype=torch.int64, device=dev), torch.cumsum(keep, 1) * keep], 1)
        segment_map = new_id.gather(1, slot).to(torch.int32).reshape(b, h, w)
        score = torch.cat([torch.full((b, nst), float("nan"), device=dev), scores.float()], 1)
        src = torch.cat([torch.full((b, nst), -1, dtype=torch.int64, device=dev),
                         torch.arange(n, device=dev)[None].expand(b, n)], 1)
        # the last key is "unknown" only with the unknown channel; without it, it is "no channel at all" (a table
        # without stuff classes and an image without instances): void, as in eager
        unknown = key == unk if self.unknown else torch.zeros_like(key, dtype=torch.bool)
        return segment_map, unknown, category, score, area, src

    def _panoptic_argmax(self, sem: torch.Tensor, crop: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` int64 channel of each pixel: stuff ``< Nst``, slot ``Nst + i``, unknown ``Nst + N``."""
        b, c, h, w = sem.shape
        n = crop.shape[1]
        nst = self.num_stuff
        dev = sem.device
        # Y_i: the semantic logit of instance i's class inside its crop box, 0 outside; Z_i = Y_i + M_i. One
        # (B, N, H, W) work tensor, filled in place (Y, then Z): with the masks that is the graph's whole memory
        # at full size (8 images of 1024x2048 with 100 slots: 6.7 GB each).
        things = sem[:, nst:]
        # whole planes of sem (B * C, H, W) by index: a copy per slot, 3x faster than an element-wise gather; the
        # clamp keeps padding slots (masked below) and a table without thing classes in range
        plane = (labels + nst).clamp(0, c - 1) + torch.arange(b, device=dev)[:, None] * c
        y = sem.reshape(b * c, h, w).index_select(0, plane.reshape(-1)).reshape(b, n, h, w)
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        y.masked_fill_(((rows < crop[..., 0, None]) | (rows >= crop[..., 1, None]))[..., None], 0.0)
        y.masked_fill_(((cols < crop[..., 2, None]) | (cols >= crop[..., 3, None]))[..., None, :], 0.0)
        y.masked_fill_(~valid[:, :, None, None], float("-inf"))  # padding slots take part in no maximum
        any_valid = valid.any(1)[:, None, None]
        ymax = torch.where(any_valid, y.amax(1), 0.0)  # N = 0: the max over crops is 0
        z = y.add_(masks)
        ival, first = z.max(1)  # the first maximum: the earlier instance wins ties
        unk = nst + n  # the unknown channel
        key = torch.where(any_valid, nst + first, unk)
        tmax = things.amax(1) if self.unknown and c > nst else None
        smax = sidx = None
        if nst:
            # max's indices are argmax's (the first maximum); on the CPU they come 4-10x faster than argmax's
            smax, sidx = sem[:, :nst].max(1)
        return keys_from_maxima(key, ival, ymax, tmax, smax, sidx, unk)

    def _assign(self, sem: torch.Tensor, flat: torch.Tensor, ch_area: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per candidate ``(B, Nst + N)``: category, the candidate its pixels join, the channel's area."""
        b, c = sem.shape[:2]
        n = labels.shape[1]
        nst = self.num_stuff
        dev = sem.device
        stuff_cat = torch.arange(nst, device=dev)[None].expand(b, nst)
        inst_cat = labels + nst
        target = torch.arange(nst + n, device=dev)[None].expand(b, nst + n)
        channel_area = ch_area[:, :nst + n]
        if self.class_assignment == "detector":
            return torch.cat([stuff_cat, inst_cat], 1), target, channel_area
        # (B, N, C) pixels of instance i whose semantic argmax (first maximum over all C) is class c
        cls = sem.max(1).indices.reshape(b, -1)  # the semantic argmax (first maximum), as above
        is_inst = (flat >= nst) & (flat < nst + n)
        cell = torch.where(is_inst, (flat - nst) * c + cls, n * c)
        counts = torch.zeros(b, n * c + 1, dtype=torch.int64, device=dev).scatter_add_(1, cell, torch.ones_like(cell))
        counts = counts[:, :n * c].reshape(b, n, c)
        area = counts.sum(2)
        mode = counts.argmax(2)  # first (smallest) class on ties
        freq = counts.gather(2, mode[..., None])[..., 0].double() / area.clamp(min=1).double()
        mode_is_stuff = mode < nst
        if self.class_assignment == "heuristic":
            to_stuff = (mode != inst_cat) & mode_is_stuff & (freq > self.assignment_threshold) & (area > 0)
            new_cat = inst_cat
        else:  # "semantic"
            to_stuff = mode_is_stuff & (area > 0)
            new_cat = torch.where((area > 0) & ~mode_is_stuff, mode, inst_cat)
        inst_target = torch.where(to_stuff, mode, target[:, nst:])
        return (torch.cat([stuff_cat, new_cat], 1), torch.cat([target[:, :nst], inst_target], 1),
                torch.cat([channel_area[:, :nst], area], 1))

    def _void_small_stuff(self, target: torch.Tensor, channel_area: torch.Tensor) -> torch.Tensor:
        """``target`` with ``-1`` where its stuff category's total area is below the limit."""
        nst = self.num_stuff
        if not nst or self.stuff_area_limit <= 0:
            return target
        total = torch.zeros_like(target).scatter_add_(1, target, channel_area)
        small = (total < self.stuff_area_limit) & (torch.arange(target.shape[1], device=target.device) < nst)
        return torch.where(small.gather(1, target), -1, target)
