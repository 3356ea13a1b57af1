"""UPSNet's parameter-free panoptic head with the *unknown* class (Xiong et al., CVPR 2019, §3.1-3.2).

Panoptic logits for one image with ``N`` instances (boxes ``B_i``, thing classes ``c_i``)::

    Z = [ X_stuff                        (Nst channels)
          Y_i + M_i,  i = 0..N-1         Y_i: semantic logit of c_i inside the crop box of B_i, 0 outside
                                         M_i: mask logits resized into the paste box of B_i, 0 outside
          U = max_t X_thing - max_i Y_i  (unknown; optional) ]

Where the paper and the reference code differ we follow the code (see ``docs``/the reference notes):

* ``U`` uses the box-cropped *semantic* logits ``Y_i`` (with their zeros), not the mask logits;
* the crop box ends with ``round`` and the paste box with ``trunc`` (see :mod:`panoptic.fusion.paste`);
* outside its box an instance channel is exactly 0, so an instance can win far from its box where
  every other logit is negative (the reference behaves so); with ``N = 0`` the max over crops is 0;
* the training loss averages over *all* pixels, ignored ones included (``loss_normalization="all"``).

Inference never builds the dense ``(Nst + N + 1, H, W)`` tensor: per-pixel maxima over stuff and thing
channels take one pass over the semantic logits, and the instance channels are reduced box by box
(cost = sum of box areas). :meth:`UPSNetFusion.panoptic_logits` keeps the dense form for training and
tests; :meth:`UPSNetFusion.panoptic_argmax` equals its ``argmax(0)`` exactly, ties included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..categories import CategoryTable
from ..segments import assemble_result
from ..structures import Instances, PanopticResult
from .base import PanopticFusion, fill_stuff_scores, prepare_instances, prepare_semantic
from .paste import BoxRegions, crop_dense, paste_masks_dense
from .pruning import LocalMasks, PruningConfig, local_mask_logits, prune_instances

__all__ = ["PanopticTargets", "UPSNetFusion"]

ClassAssignment = Literal["heuristic", "detector", "semantic"]


@dataclass
class PanopticTargets:
    """Training targets of the panoptic head for one image.

    Attributes:
        keep: ``(K,)`` int64 indices of the ground-truth instances used to build the logits, in channel
            order (instance ``keep[j]`` is channel ``Nst + j``).
        target: ``(H, W)`` int64 in ``0 .. Nst + K`` (``Nst + K`` = unknown) or 255 = ignore.
    """

    keep: torch.Tensor
    target: torch.Tensor


class UPSNetFusion(PanopticFusion):
    """UPSNet's panoptic head: inference (pruning, argmax, class assignment, stuff area) and training.

    Args:
        table: Category table (semantic channels: stuff first, then things).
        unknown: Add the unknown channel (Table 6 "Unk."). Unknown pixels become void and are flagged
            in ``PanopticResult.unknown_mask``.
        class_assignment: ``"heuristic"`` (paper §3.1: keep the detector class unless the mode of the
            semantic argmax inside the instance is a stuff class with frequency
            ``> assignment_threshold``, then the pixels join that stuff segment), ``"detector"``
            (always the detector class) or ``"semantic"`` (always the semantic mode).
        assignment_threshold: Frequency threshold of the heuristic, strict ``>`` (paper: "larger than
            0.5"; the reference code uses ``>=``, which differs only at exactly 0.5).
        stuff_area_limit: A stuff category whose total area is ``< stuff_area_limit`` pixels (strict, at
            output resolution, after class assignment) becomes void (reference: 4096 COCO, 2048
            Cityscapes).
        pruning: Mask pruning thresholds; see :class:`PruningConfig`.
        unknown_fraction: Training: share of ground-truth instances turned unknown; the head keeps
            ``max(floor(N * (1 - unknown_fraction)), 1)`` of ``N`` (reference: keep fraction 0.7).
        loss_normalization: ``"all"`` divides the summed cross-entropy by all pixels (reference) or
            ``"valid"`` by non-ignored pixels.
        ignore_index: Ignore label of semantic targets and panoptic targets.

    Example:
        >>> table = CategoryTable.from_coco([{"id": 1, "isthing": 0}, {"id": 2, "isthing": 1}])
        >>> fusion = UPSNetFusion(table, stuff_area_limit=0)
        >>> sem = torch.zeros(1, 2, 4, 4); sem[0, 1, :2, :2] = 5.0
        >>> inst = Instances(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.9]), torch.tensor([0]),
        ...                  torch.full((1, 28, 28), 3.0))
        >>> fusion(sem, [inst])[0].segment_map
        tensor([[2, 2, 1, 1],
                [2, 2, 1, 1],
                [1, 1, 1, 1],
                [1, 1, 1, 1]], dtype=torch.int32)
    """

    def __init__(
        self,
        table: CategoryTable,
        *,
        unknown: bool = True,
        class_assignment: ClassAssignment = "heuristic",
        assignment_threshold: float = 0.5,
        stuff_area_limit: int = 4096,
        pruning: PruningConfig | None = None,
        unknown_fraction: float = 0.3,
        loss_normalization: Literal["all", "valid"] = "all",
        ignore_index: int = 255,
    ) -> None:
        super().__init__(table)
        if class_assignment not in ("heuristic", "detector", "semantic"):
            raise ValueError(f"class_assignment must be 'heuristic', 'detector' or 'semantic', got {class_assignment!r}.")
        if not 0.0 <= unknown_fraction < 1.0:
            raise ValueError(f"unknown_fraction must be in [0, 1), got {unknown_fraction}.")
        if loss_normalization not in ("all", "valid"):
            raise ValueError(f"loss_normalization must be 'all' or 'valid', got {loss_normalization!r}.")
        self.unknown = unknown
        self.class_assignment = class_assignment
        self.assignment_threshold = assignment_threshold
        self.stuff_area_limit = stuff_area_limit
        self.pruning = pruning if pruning is not None else PruningConfig()
        self.unknown_fraction = unknown_fraction
        self.loss_normalization = loss_normalization
        self.ignore_index = ignore_index

    # ================================================================================ inference
    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        """Prune, take the panoptic argmax, assign classes, void small stuff. See the class docstring."""
        size = (int(semantic_logits.shape[1]), int(semantic_logits.shape[2]))
        keep = prune_instances(instances, size, self.pruning)
        kept = instances[keep]
        channel = self._argmax(semantic_logits, kept, local_mask_logits(kept, size))
        return self._to_result(semantic_logits, kept, keep, channel)

    def panoptic_argmax(self, semantic_logits: torch.Tensor, instances: Instances) -> torch.Tensor:
        """``(H, W)`` int64 index into the channels of :meth:`panoptic_logits`, computed box-locally.

        Exactly ``panoptic_logits(semantic_logits, instances).argmax(0)`` (first maximum on ties) for
        the given instances (no pruning), without materialising the dense tensor.

        Args:
            semantic_logits: ``(C, H, W)``.
            instances: Boxes in pixels of ``(H, W)``.
        """
        size = (int(semantic_logits.shape[1]), int(semantic_logits.shape[2]))
        sem = prepare_semantic(semantic_logits[None], self.table, 1, None)[0]
        inst = prepare_instances(instances, self.table, size, sem.device)
        return self._argmax(sem, inst, local_mask_logits(inst, size))

    def _argmax(self, sem: torch.Tensor, inst: Instances, local: LocalMasks) -> torch.Tensor:
        nst, n = self.table.num_stuff, len(inst)
        h, w = sem.shape[1:]
        dev = sem.device
        neg_inf = torch.tensor(float("-inf"), device=dev)
        smax, sarg = _max_argmax(sem[:nst], (h, w))
        tmax = sem[nst:].amax(0) if self.table.num_things else torch.full((h, w), float("-inf"), device=dev)
        if n == 0:
            ival = neg_inf.expand(h, w)
            iidx = torch.zeros(h, w, dtype=torch.int64, device=dev)
            ymax = torch.zeros(h, w, device=dev)
        else:
            ival, iidx, ymax = self._instance_max(sem, inst, local)
        if self.unknown:
            u = tmax - ymax
        else:
            u = neg_inf.expand(h, w)
        # First maximum wins, channel order stuff < instances < unknown.
        stuff_wins = (smax >= ival) & (smax >= u)
        inst_wins = ~stuff_wins & (ival >= u)
        unknown_idx = torch.tensor(nst + n, device=dev)
        return torch.where(stuff_wins, sarg, torch.where(inst_wins, nst + iidx, unknown_idx))

    def _instance_max(self, sem: torch.Tensor, inst: Instances,
                      local: LocalMasks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Max and first argmax over instance channels, and max over the crops ``Y_i``, per pixel."""
        nst, n = self.table.num_stuff, len(inst)
        h, w = sem.shape[1:]
        dev = sem.device
        cval = torch.full((h, w), float("-inf"), device=dev)  # best Z_i among instances covering p
        cidx = torch.full((h, w), -1, dtype=torch.int64, device=dev)
        ycov = torch.full((h, w), float("-inf"), device=dev)  # best Y_i among instances covering p
        # first instance NOT covering p: it supplies the zero that every uncovered channel holds
        first_out = torch.zeros(h, w, dtype=torch.int64, device=dev)
        channels = (inst.labels + nst).tolist()
        for i, ((cy0, cy1, cx0, cx1), (py0, py1, px0, px1)) in enumerate(zip(local.regions.crop,
                                                                              local.regions.paste)):
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            y = sem[channels[i], cy0:cy1, cx0:cx1]
            z = y.clone()
            z[py0 - cy0:py1 - cy0, px0 - cx0:px1 - cx0] += local.logits[i]
            cv, ci = cval[cy0:cy1, cx0:cx1], cidx[cy0:cy1, cx0:cx1]
            better = z > cv
            cv.copy_(torch.where(better, z, cv))
            ci.masked_fill_(better, i)
            yc = ycov[cy0:cy1, cx0:cx1]
            torch.maximum(yc, y, out=yc)
            fo = first_out[cy0:cy1, cx0:cx1]
            fo.masked_fill_(fo == i, i + 1)
        has_zero = first_out < n
        zero = torch.zeros((), device=dev)
        ival = torch.where(has_zero, torch.maximum(cval, zero), cval)
        tie_idx = torch.where(cidx >= 0, torch.minimum(cidx, first_out), first_out)
        iidx = torch.where(has_zero & (cval <= 0), torch.where(cval == 0, tie_idx, first_out), cidx)
        ymax = torch.where(has_zero, torch.maximum(ycov, zero), ycov)
        return ival, iidx, ymax

    def _to_result(self, sem: torch.Tensor, kept: Instances, source: torch.Tensor,
                   channel: torch.Tensor) -> PanopticResult:
        """Class assignment and stuff area threshold on the channel map; build the segment table."""
        nst, n, c = self.table.num_stuff, len(kept), self.table.num_classes
        dev = sem.device
        is_unknown = channel == nst + n if self.unknown else torch.zeros_like(channel, dtype=torch.bool)
        inst_cat = kept.labels + nst  # (n,) contiguous category of each instance channel
        target = torch.arange(nst + n, device=dev)  # candidate each channel maps to
        if n and self.class_assignment != "detector":
            inst_cat, target = self._assign_classes(sem, channel, inst_cat, target)
        lut = torch.cat([target, torch.tensor([-1], device=dev)])
        labels = lut[channel]
        if nst and self.stuff_area_limit > 0:
            area = torch.bincount(labels.reshape(-1) + 1, minlength=nst + n + 1)[1:nst + 1]
            small = torch.cat([area < self.stuff_area_limit, torch.zeros(n + 1, dtype=torch.bool, device=dev)])
            labels = torch.where(small[labels], torch.full_like(labels, -1), labels)
        category = torch.cat([torch.arange(nst, device=dev), inst_cat])
        isthing = self.table.isthing_tensor(dev)[category] if c else torch.zeros(0, dtype=torch.bool, device=dev)
        score = torch.cat([torch.full((nst,), float("nan"), device=dev), kept.scores.float()])
        src = torch.cat([torch.full((nst,), -1, dtype=torch.int64, device=dev), source])
        result = assemble_result(labels, category, isthing, score, src, unknown_mask=is_unknown)
        return fill_stuff_scores(result, sem)

    def _assign_classes(self, sem: torch.Tensor, channel: torch.Tensor, inst_cat: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nst, c = self.table.num_stuff, self.table.num_classes
        n = inst_cat.numel()
        sem_arg = semantic_argmax(sem, nst)
        sel = (channel >= nst) & (channel < nst + n)
        keys = (channel[sel] - nst) * c + sem_arg[sel]
        counts = torch.bincount(keys, minlength=n * c).reshape(n, c)
        area = counts.sum(1)
        mode_count, mode = counts.max(1)  # first (smallest) class on ties
        freq = mode_count.double() / area.clamp(min=1).double()
        mode_is_stuff = mode < nst
        if self.class_assignment == "heuristic":
            to_stuff = (mode != inst_cat) & mode_is_stuff & (freq > self.assignment_threshold) & (area > 0)
            new_cat = inst_cat
        else:  # "semantic": always the semantic mode
            to_stuff = mode_is_stuff & (area > 0)
            new_cat = torch.where((area > 0) & ~mode_is_stuff, mode, inst_cat)
        target = target.clone()
        target[nst:] = torch.where(to_stuff, mode, target[nst:])
        return new_cat, target

    # ================================================================================= training
    def panoptic_logits(self, semantic_logits: torch.Tensor, instances: Instances,
                        box_scale: float = 1.0) -> torch.Tensor:
        """Dense panoptic logits ``Z`` of one image, differentiable w.r.t. semantic and mask logits.

        Args:
            semantic_logits: ``(C, H, W)`` (in training, the 1/4-resolution head output).
            instances: ``N`` instances (in training, the kept ground-truth boxes with the mask head's
                logits of their ground-truth class); scores are not used.
            box_scale: Factor from box coordinates to ``(H, W)`` pixels (0.25 for 1/4-resolution logits
                with boxes in input pixels).

        Returns:
            ``(Nst + N + 1, H, W)`` with the unknown channel last, or ``(Nst + N, H, W)`` without it.
        """
        if semantic_logits.ndim != 3 or semantic_logits.shape[0] != self.table.num_classes:
            raise ValueError(f"semantic_logits must be (C, H, W) with C={self.table.num_classes}, "
                             f"got {tuple(semantic_logits.shape)}.")
        nst = self.table.num_stuff
        h, w = semantic_logits.shape[1:]
        instances.validate(self.table.num_things)
        if instances.mask_space == "image" and len(instances) and tuple(instances.mask_logits.shape[1:]) != (h, w):
            raise ValueError(f"full-image mask logits must be {h}x{w} like the semantic logits in training.")
        local = local_mask_logits(instances, (h, w), box_scale)
        y = crop_dense(semantic_logits[nst + instances.labels], local.regions)
        if instances.mask_space == "roi":
            m = paste_masks_dense(instances.mask_logits, local.regions, (h, w))
        else:
            m = crop_dense(instances.mask_logits, _paste_as_crop(local))
        parts = [semantic_logits[:nst], y + m]
        if self.unknown:
            tmax = semantic_logits[nst:].amax(0) if self.table.num_things else semantic_logits.new_full(
                (h, w), float("-inf"))
            ymax = y.amax(0) if len(instances) else semantic_logits.new_zeros(h, w)
            parts.append((tmax - ymax)[None])
        return torch.cat(parts, 0)

    def make_targets(self, semantic_target: torch.Tensor, instance_masks: torch.Tensor,
                     generator: torch.Generator | None = None) -> PanopticTargets:
        """Panoptic targets: kept instances get their channel, dropped ones and crowd become unknown.

        Rules (reference ``MaskMatching``): stuff pixels keep their stuff id; ignore stays ignore;
        each kept instance's mask writes ``Nst + j`` (later kept instances overwrite earlier ones, and
        masks overwrite anything); remaining thing pixels (dropped instances, crowd regions and thing
        pixels no mask covers) become unknown ``Nst + K``, or ignore when ``unknown=False``.

        Args:
            semantic_target: ``(H, W)`` int64 contiguous category ids, ``ignore_index`` = ignore; crowd
                regions carry their thing class.
            instance_masks: ``(N, H, W)`` bool masks of the non-crowd ground-truth instances.
            generator: Seeded generator choosing which instances become unknown.

        Returns:
            :class:`PanopticTargets`; ``keep`` is sorted ascending.
        """
        if semantic_target.ndim != 2:
            raise ValueError(f"semantic_target must be (H, W), got {tuple(semantic_target.shape)}.")
        if instance_masks.ndim != 3 or instance_masks.shape[1:] != semantic_target.shape:
            raise ValueError(f"instance_masks must be (N, H, W) with (H, W) = {tuple(semantic_target.shape)}, "
                             f"got {tuple(instance_masks.shape)}; resize masks like the target (nearest).")
        nst, c = self.table.num_stuff, self.table.num_classes
        sem = semantic_target.long()
        valid = (sem >= 0) & (sem < c)
        if ((~valid) & (sem != self.ignore_index)).any():
            raise ValueError(f"semantic_target values must be 0..{c - 1} or {self.ignore_index} (ignore).")
        n = int(instance_masks.shape[0])
        dev = sem.device
        if n and self.unknown:
            n_keep = max(math.floor(n * (1.0 - self.unknown_fraction) + 1e-9), 1)
            keep = torch.randperm(n, generator=generator).to(dev)[:n_keep].sort().values
        else:
            keep = torch.arange(n, device=dev)
        k = int(keep.numel())
        fill = nst + k if self.unknown else self.ignore_index
        target = torch.where(valid & (sem >= nst), torch.full_like(sem, fill), sem)
        if k:
            order = torch.arange(1, k + 1, device=dev)[:, None, None]
            owner = (instance_masks[keep].bool() * order).amax(0)  # last kept mask wins overlaps
            target = torch.where(owner > 0, nst + owner - 1, target)
        return PanopticTargets(keep, target)

    def panoptic_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of one image's panoptic logits.

        Args:
            logits: ``(Nst + K (+1), H, W)`` from :meth:`panoptic_logits`.
            target: ``(H, W)`` from :meth:`make_targets`.
        """
        if logits.shape[1:] != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} sizes differ; build "
                             "the target at the logits' resolution.")
        t = target.long()
        if ((t >= logits.shape[0]) & (t != self.ignore_index)).any():
            raise ValueError(f"target has labels >= {logits.shape[0]} channels; the logits must be built from the "
                             "kept instances (PanopticTargets.keep) in the same order.")
        total = F.cross_entropy(logits[None].float(), t[None], ignore_index=self.ignore_index, reduction="sum")
        denom = t.numel() if self.loss_normalization == "all" else (t != self.ignore_index).sum().clamp(min=1)
        return total / denom

    def loss(self, semantic_logits: torch.Tensor, instances: list[Instances], targets: list[PanopticTargets],
             box_scale: float = 1.0) -> torch.Tensor:
        """Mean panoptic loss over a batch.

        Args:
            semantic_logits: ``(B, C, H, W)``.
            instances: Per image, the ground-truth instances already subset by ``targets[b].keep`` (boxes,
                labels, and the mask head's logits for those boxes).
            targets: From :meth:`make_targets`.
            box_scale: See :meth:`panoptic_logits`.
        """
        if not (semantic_logits.shape[0] == len(instances) == len(targets)):
            raise ValueError("semantic_logits, instances and targets must have the same batch size.")
        losses = [self.panoptic_loss(self.panoptic_logits(s, inst, box_scale), t.target)
                  for s, inst, t in zip(semantic_logits, instances, targets)]
        return torch.stack(losses).mean()


def semantic_argmax(sem: torch.Tensor, num_stuff: int) -> torch.Tensor:
    """``(H, W)`` int64 argmax over all channels of ``sem`` ``(C, H, W)`` (first maximum on ties)."""
    return sem.argmax(0) if sem.shape[0] else torch.zeros(sem.shape[1:], dtype=torch.int64, device=sem.device)


def _max_argmax(x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel max and first argmax of ``(K, H, W)``; ``-inf``/0 when ``K == 0``."""
    if x.shape[0] == 0:
        return (torch.full(size, float("-inf"), device=x.device),
                torch.zeros(size, dtype=torch.int64, device=x.device))
    vals, idx = x.max(0)
    return vals, idx


def _paste_as_crop(local: LocalMasks) -> BoxRegions:
    """Regions whose crop box is the paste box (to cut full-image masks like pasted ROI masks)."""
    return BoxRegions(local.regions.paste, local.regions.paste)
