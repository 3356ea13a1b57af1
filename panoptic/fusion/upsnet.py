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

Inference follows the rule step by step (:meth:`UPSNetFusion.fuse_image`): prune the instances, take the
panoptic argmax, assign classes, void small stuff, assemble the segments. The argmax never builds the dense
``(Nst + N + 1, H, W)`` tensor: :func:`panoptic._ops.upsnet_keys` reduces the instance channels box by box and
writes one small integer key per pixel (the stuff class, the instance together with the pixel's semantic class,
or unknown); one ``bincount`` of the keys gives every area and the class-assignment statistics, and small lookup
tables turn the keys into segment ids. :meth:`UPSNetFusion.panoptic_logits` keeps the dense form for training and
tests; :meth:`UPSNetFusion.panoptic_argmax` equals its ``argmax(0)`` exactly, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .._ops import upsnet_keys
from ..categories import CategoryTable
from ..segments import assemble_from_keys
from ..structures import Instances, PanopticResult
from .base import (
    FiniteCheck,
    PanopticFusion,
    fill_stuff_scores,
    fill_stuff_scores_sampled,
    prepare_instances,
    prepare_semantic,
    score_stride,
    scratch,
)
from .paste import BoxRegions, crop_dense, paste_masks_dense
from .pruning import LocalMasks, PruningConfig, local_mask_logits, prune_and_paste
from .upsnet_graph import UPSNetGraph

__all__ = ["UPSNetFusion"]

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
            ``max(int(N * (1 - unknown_fraction)), 1)`` of ``N``, in float arithmetic as the reference (keep
            fraction 0.7: ``N = 90`` keeps 62, since ``90 * 0.7 = 62.99999999999999``).
        loss_normalization: ``"all"`` divides the summed cross-entropy by all pixels (reference) or
            ``"valid"`` by non-ignored pixels.
        ignore_index: Ignore label of semantic targets and panoptic targets.
        batched: :meth:`forward` fuses the batch as padded tensors with the static-shape graph of
            :mod:`panoptic.fusion.upsnet_graph` (the pruning and mask paste stay per image) instead of one
            box-local call per image; identical results. Dense over ``(B, N, H, W)``: for devices and export
            checks, not for CPU speed (see ``docs/concepts/ops.md``, "Batching and export").

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

    checks_finite = True  # in its pass over the logits (see _keys)

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
        batched: bool = False,
    ) -> None:
        super().__init__(table)
        if class_assignment not in ("heuristic", "detector", "semantic"):
            raise ValueError("class_assignment must be 'heuristic', 'detector' or 'semantic', "
                             f"got {class_assignment!r}.")
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
        self.batched = batched

    def forward(self, semantic_logits: torch.Tensor, instances: Sequence[Instances],
                output_size: tuple[int, int] | None = None) -> list[PanopticResult]:
        """Fuse a batch (see :meth:`PanopticFusion.forward`); with ``batched=True`` as padded tensors."""
        if not self.batched:
            return super().forward(semantic_logits, instances, output_size)
        from ..export import fusion_graph, run_exported  # panoptic.export imports this module

        return run_exported(fusion_graph(self), self, semantic_logits, instances, output_size=output_size)

    def static_graph(self) -> UPSNetGraph:
        """The static-shape module of the per-pixel path, which :func:`panoptic.export.export_fusion` traces."""
        return UPSNetGraph(self.table.isthing_tensor(), self.unknown, self.class_assignment,
                           self.assignment_threshold, self.stuff_area_limit)

    # ================================================================================ inference
    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        """Prune, take the panoptic argmax, assign classes, void small stuff, assemble. See the class docstring."""
        sem = semantic_logits
        size = (int(sem.shape[1]), int(sem.shape[2]))
        # 1. mask pruning (§3.2): score, NMS, top-k, same-class overlap; the kept masks pasted box-locally
        keep, local = prune_and_paste(instances, size, self.pruning)
        kept = instances[keep]
        # 2. panoptic argmax over [stuff, instances, unknown], keyed with the pixel's semantic class when the
        #    class assignment needs it
        pairs = len(kept) > 0 and self.class_assignment != "detector"
        keys, counts, unknown, samples = self._keys(sem, kept, local, pairs, self.unknown, True)
        # 3. instance class assignment: each channel's category and the candidate it maps to
        channel_area, category, target = self._class_assignment(sem, kept, keys, counts, pairs)
        # 4. stuff area: a stuff category smaller than the limit becomes void
        label = self._void_small_stuff(target, channel_area)
        # 5. assemble the segments
        return self._assemble(sem, kept, keep, keys, counts, unknown, samples, pairs, category, label)

    def panoptic_argmax(self, semantic_logits: torch.Tensor, instances: Instances) -> torch.Tensor:
        """``(H, W)`` int64 index into the channels of :meth:`panoptic_logits`, computed box-locally.

        Exactly ``panoptic_logits(semantic_logits, instances).argmax(0)`` (first maximum on ties) for
        the given instances (no pruning), without materialising the dense tensor.

        Args:
            semantic_logits: ``(C, H, W)``.
            instances: Boxes in pixels of ``(H, W)``.
        """
        size = (int(semantic_logits.shape[1]), int(semantic_logits.shape[2]))
        sem = prepare_semantic(semantic_logits[None], self.table, 1, None, check_finite=False)[0]
        inst = prepare_instances(instances, self.table, size, sem.device)
        return self._argmax(sem, inst, local_mask_logits(inst, size))

    def _argmax(self, sem: torch.Tensor, inst: Instances, local: LocalMasks) -> torch.Tensor:
        """Channel map (int64 copy): without ``pairs`` the keys of :meth:`_keys` are channel indices."""
        return self._keys(sem, inst, local, pairs=False, want_unknown=False, want_samples=False)[0].long()

    @torch.no_grad()
    def _keys(self, sem: torch.Tensor, inst: Instances, local: LocalMasks, pairs: bool, want_unknown: bool,
              want_samples: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Winning channel of every pixel as an ``(H, W)`` int32 key map, the count of every key, the
        unknown mask (``None`` unless ``want_unknown`` and some pixel is unknown) and, if ``want_samples``,
        the logits on the grid of :func:`~panoptic.fusion.base.fill_stuff_scores` as ``(C, S)`` .

        Keys: stuff channel ``k`` -> ``k``; instance ``i`` -> ``Nst + i``, or with ``pairs``
        ``Nst + i * (Nst + 1) + c`` where ``c`` is the semantic argmax (over all ``C`` classes, first
        maximum) if it is a stuff class and ``c = Nst`` if it is a thing class; unknown -> the last key
        ``Nst + N`` (``Nst + N * (Nst + 1)`` with ``pairs``). Without ``pairs`` the key map is the channel
        map, i.e. the dense ``argmax(0)``.

        The key map and the samples are scratch buffers (see :func:`~panoptic.fusion.base.scratch`): use
        them before the next call.
        """
        nst = self.table.num_stuff
        n = len(inst)
        h, w = int(sem.shape[1]), int(sem.shape[2])
        dev = sem.device
        unk = nst + n * (nst + 1 if pairs else 1)
        keys = scratch("upsnet.keys", (h, w), torch.int32, dev)
        stride = score_stride(h, w)
        samples = None
        if want_samples:
            samples = scratch("upsnet.samples", (sem.shape[0], -(-h // stride), -(-w // stride)), sem.dtype, dev)
        finite = FiniteCheck(sem)
        counts = torch.empty(unk + 1, dtype=torch.int64, device=dev)
        upsnet_keys(sem, local.regions.crop, local.regions.paste, local.logits, (inst.labels + nst).tolist(), nst,
                    pairs, self.unknown, keys, samples, stride, finite, counts)
        finite.raise_if_not_finite()
        # One full-map compare, and only when some pixel is unknown (the caller's all-False default is cheaper).
        unknown = torch.eq(keys, unk) if want_unknown and bool(counts[unk]) else None
        return keys, counts, unknown, None if samples is None else samples.reshape(samples.shape[0], -1)

    def _class_assignment(self, sem: torch.Tensor, kept: Instances, keys: torch.Tensor, counts: torch.Tensor,
                          pairs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per channel (stuff, then instances): its area ``(Nst + N,)``; the instances' categories ``(N,)``; and the
        candidate each channel's pixels join ``(Nst + N,)`` (an instance turned stuff joins that stuff class)."""
        nst, n = self.table.num_stuff, len(kept)
        step = nst + 1 if pairs else 1
        unk = nst + n * step
        category = kept.labels + nst  # contiguous category of each instance channel
        target = torch.arange(nst + n, device=sem.device)
        if not pairs:  # "detector", or no instance
            return counts[:nst + n], category, target
        pair_counts = counts[nst:unk].reshape(n, step)
        channel_area = torch.cat([counts[:nst], pair_counts.sum(1)])
        category, target = self._assign_classes(self._class_counts(sem, keys, pair_counts), category, target)
        return channel_area, category, target

    def _void_small_stuff(self, target: torch.Tensor, channel_area: torch.Tensor) -> torch.Tensor:
        """Candidate of each channel ``(Nst + N,)``, ``-1`` where its stuff category's total area (after class
        assignment) is ``< stuff_area_limit``."""
        nst = self.table.num_stuff
        if not nst or self.stuff_area_limit <= 0:
            return target
        area = torch.zeros_like(target).index_add_(0, target, channel_area)[:nst]
        small = torch.cat([area < self.stuff_area_limit, torch.zeros(len(target) - nst, dtype=torch.bool,
                                                                     device=target.device)])
        return torch.where(small[target], -1, target)

    def _assemble(self, sem: torch.Tensor, kept: Instances, source: torch.Tensor, keys: torch.Tensor,
                  counts: torch.Tensor, unknown: torch.Tensor | None, samples: torch.Tensor, pairs: bool,
                  inst_cat: torch.Tensor, label: torch.Tensor) -> PanopticResult:
        """The segment table from the key counts: candidates are the stuff classes, then the kept instances."""
        nst, c = self.table.num_stuff, self.table.num_classes
        dev = sem.device
        step = nst + 1 if pairs else 1
        void = torch.full((1,), -1, dtype=torch.int64, device=dev)
        key_label = torch.cat([label[:nst], label[nst:].repeat_interleave(step), void])
        category = torch.cat([torch.arange(nst, device=dev), inst_cat])
        isthing = self.table.isthing_tensor(dev)[category] if c else torch.zeros(0, dtype=torch.bool, device=dev)
        score = torch.cat([torch.full((nst,), float("nan"), device=dev), kept.scores.float()])
        src = torch.cat([torch.full((nst,), -1, dtype=torch.int64, device=dev), source])
        result = assemble_from_keys(keys, counts, key_label, category, isthing, score, src, unknown_mask=unknown)
        if torch.is_grad_enabled() and sem.requires_grad:  # keep the scores differentiable, as before
            return fill_stuff_scores(result, sem)
        return fill_stuff_scores_sampled(result, samples, score_stride(*result.image_size))

    def _class_counts(self, sem: torch.Tensor, keys: torch.Tensor, pair_counts: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` counts of the semantic argmax over each instance's pixels, as the assignment needs them.

        ``pair_counts`` ``(N, Nst + 1)`` has exact stuff-class counts and, last, the count of pixels whose
        argmax is *some* thing class. Which thing class matters only if the mode may be a thing class and
        the rule uses it; otherwise the thing pixels are put on the first thing class, which gives the same
        decision. The exact per-thing counts take one more pass (:meth:`_thing_class_counts`).
        """
        nst, nth = self.table.num_stuff, self.table.num_things
        n = pair_counts.shape[0]
        stuff, things = pair_counts[:, :nst], pair_counts[:, nst]
        area = pair_counts.sum(1)
        top = stuff.amax(1) if nst else torch.zeros_like(things)
        stuff_mode = top >= things  # the mode is a stuff class (ties go to stuff, which comes first)
        if self.class_assignment == "heuristic":
            # Only a stuff mode with frequency > threshold matters; a thing mode is decided unless the best
            # stuff count could still beat the best thing class (>= things / nth pixels).
            freq = top.double() / area.clamp(min=1).double()
            open_ = (freq > self.assignment_threshold) & (area > 0) & ~stuff_mode & (top * nth >= things)
        else:  # "semantic": the thing mode itself is the new category
            open_ = (area > 0) & ~stuff_mode
        if bool(open_.any()):  # one host sync per image
            thing_counts = self._thing_class_counts(sem, keys, n)
        else:
            thing_counts = torch.zeros(n, nth, dtype=torch.int64, device=pair_counts.device)
            thing_counts[:, 0] = things
        return torch.cat([stuff, thing_counts], 1)

    @torch.no_grad()
    def _thing_class_counts(self, sem: torch.Tensor, keys: torch.Tensor, n: int) -> torch.Tensor:
        """``(N, nth)`` exact counts of the thing-class argmax over the pixels keyed "instance i, thing"."""
        nst, nth = self.table.num_stuff, self.table.num_things
        dev = sem.device
        step = nst + 1
        unk = nst + n * step
        is_thing_key = torch.zeros(unk + 1, dtype=torch.bool, device=dev)
        is_thing_key[2 * nst:unk:step] = True
        flat = keys.reshape(-1)
        idx = torch.nonzero(is_thing_key[flat])[:, 0]
        inst_idx = torch.div(flat[idx] - 2 * nst, step, rounding_mode="floor")
        # max's indices are argmax's (the first maximum) and come several times faster on the CPU
        cls = sem[nst:].reshape(nth, -1).index_select(1, idx).max(0).indices
        total = torch.bincount(inst_idx * nth + cls, minlength=n * nth)
        return total.reshape(n, nth)

    def _assign_classes(self, counts: torch.Tensor, inst_cat: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class assignment from ``counts`` ``(N, C)``: pixels of instance ``i`` with semantic argmax ``c``."""
        nst = self.table.num_stuff
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
            # The reference's int(N * 0.7) in float arithmetic: N = 90 keeps int(62.99999999999999) = 62.
            n_keep = max(int(n * (1.0 - self.unknown_fraction)), 1)
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



def _paste_as_crop(local: LocalMasks) -> BoxRegions:
    """Regions whose crop box is the paste box (to cut full-image masks like pasted ROI masks)."""
    return BoxRegions(local.regions.paste, local.regions.paste)

