"""The heuristic combiner's per-pixel path over a padded batch, with static shapes (exportable, no host syncs).

:class:`~panoptic.fusion.HeuristicFusion` pastes instances one after another: whether instance ``k`` is kept
depends on the pixels instances ``0 .. k-1`` painted, a sequential, data-dependent selection like NMS. That
part runs eagerly (:meth:`HeuristicFusion.paint_instances`) and hands the graph a *paint map*: the slot of the
instance that painted each pixel, or ``-1``. Everything after it is per pixel and lives here: the semantic
argmax, the stuff area test (on the raw semantic map for ``"upsnet"``, on the unpainted pixels otherwise) and
the segment numbering. Its results equal the eager fusion's exactly (``tests/test_export.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__: list[str] = []  # machinery of panoptic.export (see docs/concepts/ops.md)


class HeuristicGraph(nn.Module):
    """Semantic argmax, stuff area and segment numbering of a padded batch whose instances are painted.

    Args:
        num_stuff: ``Nst``, the table's stuff categories (the first ``Nst`` channels).
        stuff_area_limit: A stuff class keeps its pixels iff its area is ``>=`` this (pixels).
        stuff_before_paste: Measure the stuff area on the raw semantic map (``"upsnet"``) instead of on the
            pixels no instance painted.
    """

    def __init__(self, num_stuff: int, stuff_area_limit: float, stuff_before_paste: bool) -> None:
        super().__init__()
        self.num_stuff = int(num_stuff)
        self.stuff_area_limit = float(stuff_area_limit)
        self.stuff_before_paste = bool(stuff_before_paste)

    def forward(self, sem: torch.Tensor, paint: torch.Tensor, labels: torch.Tensor,
                scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fuse a padded batch.

        Args:
            sem: ``(B, C, H, W)`` float semantic logits at output size, stuff channels first.
            paint: ``(B, H, W)`` int64 slot of the instance that painted each pixel, ``-1`` for none.
            labels: ``(B, N)`` int64 thing indices of the slots (visit order; ``N >= 1``, padding unpainted).
            scores: ``(B, N)`` float detection scores.

        Returns:
            ``segment_map`` ``(B, H, W)`` int32 (0 void; things in visit order, then stuff in channel order),
            ``unknown_mask`` ``(B, H, W)`` bool (all ``False``: the heuristic has no unknown class), and per
            candidate (the ``N`` slots, then the ``Nst`` stuff classes), ``(B, N + Nst)`` each: ``category``
            int64, ``score`` float32 (NaN for stuff), ``area`` int64 (0 = no segment) and ``slot`` int64 (the
            instance slot, -1 for stuff).
        """
        b, _, h, w = sem.shape
        n, nst, dev = labels.shape[1], self.num_stuff, sem.device
        q = nst + 1
        # Key of a pixel: (painting slot + 1) * (Nst + 1) + its semantic class if stuff, else Nst ("a thing").
        # argmax (first maximum over all C channels) as max's indices: several times faster on the CPU
        cls = sem.max(1).indices
        sem_key = torch.where(cls < nst, cls, nst)
        key = ((paint + 1) * q + sem_key).reshape(b, h * w)
        counts = torch.zeros(b, (n + 1) * q, dtype=torch.int64, device=dev).scatter_add_(1, key, torch.ones_like(key))
        per_key = counts.reshape(b, n + 1, q)
        area = per_key[:, :, :nst].sum(1) if self.stuff_before_paste else per_key[:, 0, :nst]
        stuff = torch.arange(n, n + nst, device=dev)[None].expand(b, nst)
        stuff_label = torch.where(area.double() >= self.stuff_area_limit, stuff, -1)
        # Candidate of every key: unpainted stuff -> its class (if large enough), unpainted thing -> void,
        # painted -> the painting slot.
        key_label = torch.cat([stuff_label, torch.full((b, 1), -1, dtype=torch.int64, device=dev),
                               torch.arange(n, device=dev).repeat_interleave(q)[None].expand(b, n * q)], 1)
        slot = key_label.gather(1, key) + 1  # candidate + 1, 0 = void
        cand_area = torch.zeros(b, n + nst + 1, dtype=torch.int64, device=dev).scatter_add_(1, slot,
                                                                                             torch.ones_like(slot))
        cand_area = cand_area[:, 1:]
        keep = (cand_area > 0).long()
        new_id = torch.cat([torch.zeros(b, 1, dtype=torch.int64, device=dev), torch.cumsum(keep, 1) * keep], 1)
        segment_map = new_id.gather(1, slot).to(torch.int32).reshape(b, h, w)
        category = torch.cat([labels + nst, torch.arange(nst, device=dev)[None].expand(b, nst)], 1)
        score = torch.cat([scores.float(), torch.full((b, nst), float("nan"), device=dev)], 1)
        source = torch.cat([torch.arange(n, device=dev)[None].expand(b, n),
                            torch.full((b, nst), -1, dtype=torch.int64, device=dev)], 1)
        return segment_map, torch.zeros_like(segment_map, dtype=torch.bool), category, score, cand_area, source
