"""The contract every fusion strategy implements, and the input checks they all share."""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..categories import CategoryTable
from ..structures import Instances, PanopticResult, probabilities_to_logits

__all__ = ["PanopticFusion", "fill_stuff_scores"]

_SCORE_SAMPLES = 1 << 16
_SCRATCH = threading.local()


class PanopticFusion(nn.Module, ABC):
    """Base class: semantic logits + per-image instances -> one :class:`PanopticResult` per image.

    Subclasses implement :meth:`fuse_image`; :meth:`forward` validates the batch, resizes the semantic
    logits to ``output_size`` (bilinear, ``align_corners=False``) and loops over images.

    Args:
        table: Category table; fixes the channel layout (stuff first, then things).
    """

    #: Whether :meth:`fuse_image` itself rejects non-finite logits (with :class:`FiniteCheck`, while it reads
    #: them anyway), so that :meth:`forward` can skip the separate pass over logits it does not resize.
    checks_finite: bool = False
    #: The ``Instances.mask_kind`` values :meth:`fuse_image` reads as they are; :meth:`forward` converts the others
    #: (see :func:`prepare_instances`).
    mask_kinds: tuple[str, ...] = ("logits",)

    def __init__(self, table: CategoryTable) -> None:
        super().__init__()
        self.table = table

    def forward(self, semantic_logits: torch.Tensor, instances: Sequence[Instances],
                output_size: tuple[int, int] | None = None) -> list[PanopticResult]:
        """Fuse a batch.

        Args:
            semantic_logits: ``(B, C, h, w)`` float logits, ``C = table.num_classes``, stuff channels first.
            instances: ``B`` :class:`Instances`, boxes in output pixels.
            output_size: ``(H, W)`` of the results; default ``(h, w)``.

        Returns:
            ``B`` results of size ``(H, W)``.

        Raises:
            ValueError: For invalid inputs, including tensors on the ``meta`` device (see :func:`check_not_meta`).
        """
        check_not_meta(semantic_logits, instances)
        from .._ops.threads import call_pixels, fusion_threads  # here: panoptic._ops itself imports this module

        out = []
        # threads the image size and the free cores repay (panoptic._ops.threads), restored after; the input
        # checks and the resize to output_size are passes over the logits too
        device = semantic_logits.device if isinstance(semantic_logits, torch.Tensor) else torch.device("cpu")
        with fusion_threads(call_pixels(semantic_logits, output_size), device):
            sem = self.prepare_semantic(semantic_logits, len(instances), output_size)
            size = (int(sem.shape[-2]), int(sem.shape[-1]))
            for b, inst in enumerate(instances):
                inst = prepare_instances(inst, self.table, size, sem.device, self.mask_kinds)
                out.append(self.fuse_image(sem[b], inst))
        return out

    def prepare_semantic(self, semantic_logits: torch.Tensor, batch: int,
                         output_size: tuple[int, int] | None) -> torch.Tensor:
        """Validate the batch's ``(B, C, h, w)`` logits and resize them to ``output_size`` (see
        :func:`prepare_semantic`); a fusion that accepts another channel layout converts it here."""
        return prepare_semantic(semantic_logits, self.table, batch, output_size, check_finite=not self.checks_finite)

    @abstractmethod
    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        """Fuse one image.

        Args:
            semantic_logits: ``(C, H, W)`` at output size, already validated.
            instances: Validated, on the same device; ``image``-space masks already at ``(H, W)``.
        """


def check_not_meta(semantic_logits: torch.Tensor, instances: Sequence[Instances]) -> None:
    """Refuse ``meta``-device inputs: a fusion's segments depend on the values, which meta tensors do not have.

    Raises:
        ValueError: If ``semantic_logits`` or a tensor of an :class:`Instances` is on the ``meta`` device.
    """
    tensors = [semantic_logits] + [t for inst in instances if isinstance(inst, Instances)
                                   for t in (inst.boxes, inst.scores, inst.labels, inst.mask_logits)]
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        raise ValueError("fusion got tensors on the 'meta' device, which have shapes but no values; the segments "
                         "a fusion returns depend on the values (even their number), so no shapes can be derived. "
                         "Fuse real tensors: move the model off 'meta' (e.g. model.to_empty(device='cpu') and load "
                         "its weights) before running it.")


def prepare_semantic(semantic_logits: torch.Tensor, table: CategoryTable, batch: int,
                     output_size: tuple[int, int] | None, check_finite: bool = True,
                     layout: tuple[int, str] | None = None) -> torch.Tensor:
    """Validate ``(B, C, h, w)`` logits against the table and resize them to ``output_size``.

    With ``check_finite=False`` the caller rejects non-finite values itself (see :class:`FiniteCheck`); logits
    that are resized are checked here anyway (a downsampling resize need not read every value). ``layout``:
    the channel count and its description when the logits are not in the table's layout (``C = num_classes``,
    stuff first, then things).
    """
    s = semantic_logits
    if not isinstance(s, torch.Tensor) or s.ndim != 4:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"semantic_logits must be a (B, C, H, W) tensor, got {shape}; add a batch dim with "
                         "logits[None] for one image.")
    if not s.is_floating_point():
        raise ValueError(f"semantic_logits must be float logits, got {s.dtype}.")
    if layout is not None:
        if s.shape[1] != layout[0]:
            raise ValueError(f"semantic_logits has {s.shape[1]} channels but {layout[1]}.")
    elif s.shape[1] == table.num_stuff + 1 != table.num_classes:
        raise ValueError(f"semantic_logits has {s.shape[1]} channels = {table.num_stuff} stuff + 1: a merged 'things' "
                         "channel (detectron2/mmdet Panoptic FPN)? This fusion needs one channel per category: use "
                         "panoptic.interop.expand_things_channel (approximate for UPSNetFusion), or "
                         "HeuristicFusion(..., semantic_layout='detectron2') for detectron2's layout.")
    elif s.shape[1] != table.num_classes:
        raise ValueError(f"semantic_logits has {s.shape[1]} channels but the category table has "
                         f"{table.num_classes} ({table.num_stuff} stuff then {table.num_things} things); "
                         "order the channels stuff first, then things, one per category.")
    if s.shape[0] != batch:
        raise ValueError(f"semantic_logits has batch size {s.shape[0]} but {batch} Instances were given; "
                         "pass one Instances per image (Instances.empty() for none).")
    if s.shape[2] == 0 or s.shape[3] == 0:
        raise ValueError(f"semantic_logits has an empty spatial size {tuple(s.shape[2:])}.")
    output_size = checked_output_size(output_size)
    resize = output_size is not None and tuple(s.shape[-2:]) != output_size
    if (check_finite or resize) and not _all_finite(s):
        raise ValueError(_NON_FINITE)
    x = s.float()
    if s.dtype == torch.float64 and not _all_finite(x) and _all_finite(s):  # finite, but not in float32
        raise ValueError("semantic_logits hold float64 values beyond float32's range (about 3.4e38), where the "
                         "fusions compute; scale or clamp the logits first.")
    if resize:
        x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
    return x


def checked_output_size(output_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``output_size`` as two ints, or ``None``; ``ValueError`` unless both are positive."""
    if output_size is None:
        return None
    if len(output_size) != 2 or any(int(v) <= 0 for v in output_size):
        raise ValueError(f"output_size must be (H, W) with positive ints, got {output_size!r}.")
    return int(output_size[0]), int(output_size[1])


_NON_FINITE = ("semantic_logits contains NaN or inf; check the model output (e.g. clamp or torch.nan_to_num) "
               "before fusion.")


class FiniteCheck:
    """The finiteness check of :func:`prepare_semantic`, folded into a pass that reads the logits anyway.

    The pass hands every part of the logits it reads (each value exactly once) to :meth:`add`, right after
    reading it, while it is in cache: summing it there costs a fraction of a separate pass over memory. A sum
    is finite only if every term is; :meth:`raise_if_not_finite` settles a non-finite total (possibly an
    overflow of finite values) with the exact check and raises :func:`prepare_semantic`'s ``ValueError``.

    Args:
        logits: The whole tensor the parts come from (for the exact check).
    """

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self._sums: list[torch.Tensor] = []

    def add(self, part: torch.Tensor) -> None:
        """Sum one part (any shape and strides)."""
        if part.numel():
            # the leading dimension first: on the CPU that sum is vectorised across it as ``amax`` is, and it
            # leaves a small map for the full reduction (whose cascade summation costs about 15% more per value)
            self._sums.append(part.sum(0).sum() if part.ndim > 1 else part.sum())

    def add_flag(self, finite: bool) -> None:
        """Record the verdict of a pass that checked its part itself (``False``: it read a NaN or inf)."""
        if not finite:
            self._sums.append(torch.full((), float("nan"), device=self.logits.device))

    def raise_if_not_finite(self) -> None:
        """``ValueError`` if a value added is NaN or infinite (one host sync)."""
        if self._sums and not bool(torch.isfinite(torch.stack(self._sums).sum())) and not _all_finite(self.logits):
            raise ValueError(_NON_FINITE)


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            zero: bool = False) -> torch.Tensor:
    """A work tensor reused across calls on the CPU (one per ``name`` and thread), uninitialised.

    A fresh multi-megabyte CPU allocation is served from new pages, and touching them costs a page fault
    per 4 KiB (several ms per 1024x2048 image); reusing the buffer avoids that. Callers must overwrite
    what they read and never hand a scratch tensor (or a view of it) to the user. With ``zero=True`` a
    new buffer starts zeroed, and the caller keeps it so: it restores zeros where it wrote before it
    returns (also on errors). Other devices get a plain ``torch.empty``/``torch.zeros`` (their caching
    allocators already reuse memory).
    """
    if device.type != "cpu":
        return (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
    cache = getattr(_SCRATCH, "cache", None)
    if cache is None:
        cache = _SCRATCH.cache = {}
    key = (name, torch.is_inference_mode_enabled())  # inference tensors cannot be updated outside that mode
    t = cache.get(key)
    if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        t = cache[key] = (torch.zeros if zero else torch.empty)(shape, dtype=dtype)
    return t


def _all_finite(x: torch.Tensor) -> bool:
    """``torch.isfinite(x).all()`` in one reduction pass.

    A sum is finite only if every term is (NaN propagates, ``inf`` stays ``inf`` or meets ``-inf`` as NaN), and
    it is the cheapest full reduction on the CPU (no NaN-aware compare). A non-finite sum can also come from
    finite values overflowing, so that case is settled by min and max (``aminmax`` propagates NaN, and an
    infinity is the min or the max).
    """
    if x.numel() == 0:
        return True
    if bool(torch.isfinite(x.sum())):
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def prepare_instances(inst: Instances, table: CategoryTable, size: tuple[int, int], device: torch.device,
                      mask_kinds: tuple[str, ...] = ("logits",)) -> Instances:
    """Validate one image's instances and move them to ``device``; image-space masks resized to ``size``.

    Masks of a kind the fusion does not read (``mask_kinds``, see :attr:`PanopticFusion.mask_kinds`) are
    converted: probabilities to logits (:func:`~panoptic.structures.probabilities_to_logits`, sign-exact);
    binary masks cannot become logits and raise. Resized binary masks become probabilities (bilinear on 0/1).
    """
    if not isinstance(inst, Instances):
        raise ValueError(f"expected panoptic.Instances per image, got {type(inst).__name__}.")
    inst.validate(table.num_things, size)
    inst = inst.to(device)
    kind = inst.mask_kind
    if kind not in mask_kinds:
        if kind != "probabilities" or "logits" not in mask_kinds:
            raise ValueError(f"this fusion reads mask {' or '.join(mask_kinds)}, not {kind} masks (they carry no "
                             "logit to add to the semantic logits); pass the mask probabilities "
                             "(Instances.from_probabilities) or logits, or use HeuristicFusion.")
        inst = replace(inst, mask_logits=probabilities_to_logits(inst.mask_logits), mask_kind="logits")
    if inst.mask_space == "image" and tuple(inst.mask_logits.shape[-2:]) != size and len(inst):
        m = F.interpolate(inst.mask_logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        inst = replace(inst, mask_logits=m, mask_kind="probabilities" if kind == "binary" else inst.mask_kind)
    return inst


def fill_stuff_scores(result: PanopticResult, semantic_logits: torch.Tensor) -> PanopticResult:
    """Set each stuff segment's score to the mean softmax probability of its class over the segment.

    The mean is taken on a regular grid of at most 65536 pixels (stride 1, i.e. exact, for images up to
    256x256) so that scoring never costs more than a small fraction of the fusion; a segment the grid
    misses keeps NaN.

    Args:
        result: Result whose ``score`` for stuff segments is to be filled (modified in place).
        semantic_logits: ``(C, H, W)`` logits at the result's size.
    """
    if not bool((~result.isthing).any()):
        return result
    stride = score_stride(*result.image_size)
    sub = semantic_logits[:, ::stride, ::stride]
    return fill_stuff_scores_sampled(result, sub.reshape(sub.shape[0], -1), stride)


def score_stride(h: int, w: int) -> int:
    """Stride of the grid :func:`fill_stuff_scores` samples (rows and columns ``0, stride, 2 * stride, ...``)."""
    return max(1, math.ceil(math.sqrt(h * w / _SCORE_SAMPLES)))


def fill_stuff_scores_sampled(result: PanopticResult, samples: torch.Tensor, stride: int) -> PanopticResult:
    """:func:`fill_stuff_scores` from logits already sampled on its grid.

    Args:
        result: As in :func:`fill_stuff_scores`.
        samples: ``(C, S)`` contiguous: ``semantic_logits[:, ::stride, ::stride]`` flattened row-major
            (a fusion that reads the logits anyway can collect it while they are in cache).
        stride: :func:`score_stride` of the image.
    """
    stuff = ~result.isthing
    if not bool(stuff.any()):
        return result
    seg = result.segment_map[::stride, ::stride].long().reshape(-1)
    # thing segments read channel 0 (their score is not replaced): samples may hold the stuff channels only
    own = torch.where(stuff, result.category, 0)
    cat_lut = torch.cat([torch.zeros(1, dtype=torch.int64, device=seg.device), own])
    # contiguous: the sum over the channels below then adds in one order whatever the caller's layout (a
    # channels-last view sums them in another order, which moved scores by an ulp against the eager fusion)
    x = samples.float().contiguous()
    # softmax(x)[own] = 1 / sum_c exp(x_c - x_own): one exp pass, no normalised (C, S) tensor (softmax over the
    # channel dimension is about 2x slower on the CPU); an overflow to inf gives the limit, probability 0.
    p_own = (x - x.gather(0, cat_lut[seg][None])).exp_().sum(0).reciprocal_()
    s = result.num_segments
    sums = torch.zeros(s + 1, device=seg.device).index_add_(0, seg, p_own)
    counts = torch.bincount(seg, minlength=s + 1).float()
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))[1:]
    result.score = torch.where(stuff, mean, result.score)
    return result
