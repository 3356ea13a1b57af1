"""The per-pixel steps of the query fusions: each pixel's query, each query's areas, masks pasted in order."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import torch

from .resize import native_resize_mode, resize_bilinear
from .rows import as_native, run_rows, run_threads
from .switch import native_kernels

__all__ = ["QueryAssignment", "assign_queries", "kmax_paste_order", "paste_in_order"]


class QueryAssignment(NamedTuple):
    """What :func:`assign_queries` returns.

    Attributes:
        owner: ``(H, W)`` int64 query with the largest weighted probability (first on ties, as ``argmax(0)``).
        region_area: ``(n,)`` int64 pixels each query owns.
        foreground_area: ``(n,)`` int64 pixels where the query's thresholded value is foreground.
        owner_foreground: ``(H, W)`` bool: the owner's own value is foreground there.
    """

    owner: torch.Tensor
    region_area: torch.Tensor
    foreground_area: torch.Tensor
    owner_foreground: torch.Tensor


#: Bytes of float32 mask values handled per row chunk: the chunk's passes then run in the CPU's cache.
CHUNK_BYTES = 1 << 20
#: The same for the C path's chunks of resized logits (three steps per chunk: the resize, torch's sigmoid, the pass).
NATIVE_CHUNK_BYTES = 1 << 21


@torch.no_grad()
def assign_queries(prob: torch.Tensor, scores: torch.Tensor, mask_threshold: float,
                   foreground_of_weighted: bool, sigmoid: bool = False,
                   size: tuple[int, int] | None = None, channels: int | None = None) -> QueryAssignment:
    """Per pixel, the query with the largest ``score * prob``; per query, its areas.

    Equals ``(scores[:, None, None] * prob).argmax(0)`` and the sums of the masks it implies, without an
    ``argmax`` over the leading dimension (not vectorised on the CPU, about 4x the rest): the first index reaching
    the maximum is ``n - 1 - max_k((n - 1 - k) * [w_k == max])``, from vectorised ``amax`` passes. The image is
    processed in chunks of rows (:data:`CHUNK_BYTES`) so that the passes after the first read from cache.

    With ``size``, ``prob`` is first resized to it as :func:`~panoptic._ops.resize.resize_bilinear` does
    (``F.interpolate``, bilinear, ``align_corners=False``, as part of a batch of ``channels`` masks). On the CPU
    the C kernels then do the resize and the pass row by row, without the ``(n, H, W)`` intermediate.

    Args:
        prob: ``(n, h, w)`` float32 mask probabilities of the kept queries (logits with ``sigmoid=True``),
            ``n >= 1``; **overwritten** with ``score * prob`` when no resize is needed.
        scores: ``(n,)`` float32 class scores.
        mask_threshold: A pixel is a query's foreground iff its value ``>= mask_threshold``.
        foreground_of_weighted: Threshold ``score * prob`` instead of ``prob`` (HF transformers does).
        sigmoid: ``prob`` holds logits: take their sigmoid first (in place, after the resize).
        size: ``(H, W)`` of the result; ``None``: ``(h, w)``.
        channels: The masks ``prob`` was selected from, for the resize (see ``resize_bilinear``); default ``n``.

    Returns:
        The :class:`QueryAssignment`.
    """
    resize = size is not None and tuple(int(v) for v in prob.shape[1:]) != tuple(size)
    mode = native_resize_mode(prob, size, channels) if resize else None
    if resize and mode is None:
        prob, resize = resize_bilinear(prob, size, channels), False  # torch's resize: then the pass below
    if native_kernels() is not None and as_native(prob, 3) is not None and scores.device.type == "cpu":
        return _native_pass(prob, scores, mask_threshold, foreground_of_weighted, sigmoid, size if resize else None,
                            mode)
    if resize:
        prob = resize_bilinear(prob, size, channels)
    return _torch_pass(prob, scores, mask_threshold, foreground_of_weighted, sigmoid)


def _torch_pass(prob: torch.Tensor, scores: torch.Tensor, mask_threshold: float, foreground_of_weighted: bool,
                sigmoid: bool) -> QueryAssignment:
    """:func:`assign_queries` in plain torch on masks at the output size: the specification, and the path on
    every device but the CPU."""
    n, h, w = (int(v) for v in prob.shape)
    dev = prob.device
    owner = torch.empty(h, w, dtype=torch.int64, device=dev)
    owner_foreground = torch.empty(h, w, dtype=torch.bool, device=dev)
    foreground_area = torch.zeros(n, dtype=torch.int64, device=dev)
    dtype = torch.uint8 if n <= 256 else torch.int32
    reverse = torch.arange(n - 1, -1, -1, dtype=dtype, device=dev).view(-1, 1, 1)
    sc = scores.view(-1, 1, 1).to(prob.dtype)
    rows = h if dev.type != "cpu" else max(1, CHUNK_BYTES // (4 * n * w))
    for r0 in range(0, h, rows):
        p = prob[:, r0:r0 + rows]
        if sigmoid:
            p.sigmoid_()
        if not foreground_of_weighted:
            fg = p >= mask_threshold
        p.mul_(sc)
        if foreground_of_weighted:
            fg = p >= mask_threshold
        foreground_area += _count_rows(fg.view(torch.uint8).reshape(n, -1))  # no widened copy of the chunk
        top = p.amax(0)
        at_max = torch.eq(p, top)
        code = (at_max.view(torch.uint8) if dtype == torch.uint8 else at_max.to(dtype)).mul_(reverse)
        o = owner[r0:r0 + rows]
        o.copy_(code.amax(0)).neg_().add_(n - 1)
        if foreground_of_weighted:  # the owner's weighted value is the maximum itself
            owner_foreground[r0:r0 + rows] = top >= mask_threshold
        else:
            owner_foreground[r0:r0 + rows] = fg.gather(0, o[None])[0]
    region_area = torch.bincount(owner.reshape(-1), minlength=n)
    return QueryAssignment(owner, region_area, foreground_area, owner_foreground)


def _native_pass(prob: torch.Tensor, scores: torch.Tensor, mask_threshold: float, foreground_of_weighted: bool,
                 sigmoid: bool, size: tuple[int, int] | None, mode: int | None) -> QueryAssignment:
    """:func:`assign_queries` with the C kernels: ``prob`` contiguous float32 on the CPU, resized to ``size`` (if
    given) by the C resize with ``mode``, the arithmetic :func:`native_resize_mode` found to reproduce torch's for
    this shape and batch.

    Probabilities to resize: one fused pass (resize, weigh, first maximum, counts) row by row. Logits (the sigmoid
    stays torch's, bit for bit): chunks of rows resized into a reused buffer, their sigmoid taken in place, then
    the same pass. Nothing of size ``(n, H, W)`` is allocated."""
    kernels = native_kernels()
    n, h, w = (int(v) for v in prob.shape)
    hh, ww = (int(size[0]), int(size[1])) if size is not None else (h, w)
    owner = torch.empty(hh, ww, dtype=torch.int64)
    owner_foreground = torch.empty(hh, ww, dtype=torch.bool)
    foreground_area = torch.zeros(n, dtype=torch.int64)
    region_area = torch.zeros(n, dtype=torch.int64)
    result = QueryAssignment(owner, region_area, foreground_area, owner_foreground)
    src, sc, thr = as_native(prob), scores.to(torch.float32).contiguous().numpy(), float(mask_threshold)
    areas = (foreground_area.numpy(), region_area.numpy())
    if size is not None and not sigmoid:
        out = (owner.numpy(), owner_foreground.view(torch.uint8).numpy(), *areas)
        run_rows(lambda r0, r1, cnt, ch: kernels.bilinear_assign(src, sc, n, h, w, hh, ww, mode, thr,
                                                                  foreground_of_weighted, *out, r0, r1, cnt, ch), hh)
        return result
    if size is None:
        if sigmoid:
            prob.sigmoid_()
        out = (owner.numpy(), owner_foreground.view(torch.uint8).numpy(), *areas)
        run_rows(lambda r0, r1, cnt, ch: kernels.query_assign(src, sc, n, hh, ww, thr, foreground_of_weighted, *out,
                                                               r0, r1, cnt, ch), hh)
        return result
    _native_chunks(prob, sc, thr, foreground_of_weighted, size, mode, result)
    return result


def _native_chunks(logits: torch.Tensor, scores: np.ndarray, threshold: float, foreground_of_weighted: bool,
                   size: tuple[int, int], mode: int | None, result: QueryAssignment) -> None:
    """The C pass over logits resized to ``size``: chunks of rows resized, their sigmoid taken in place by torch
    (bit for bit the reference's), then the pass; ``result``'s tensors are written.

    Each of the call's threads takes whole chunks into its own buffer and runs the three steps single-threaded, so a
    chunk stays in that core's cache and no step waits for torch's thread pool (whose spinning workers would take
    the cores the C steps need)."""
    kernels = native_kernels()
    n, h, w = (int(v) for v in logits.shape)
    hh, ww = size
    src = as_native(logits)
    areas = (result.foreground_area.numpy(), result.region_area.numpy())
    rows = max(1, min(hh, NATIVE_CHUNK_BYTES // (4 * n * ww)))
    starts, lock = iter(range(0, hh, rows)), threading.Lock()

    def worker() -> None:
        # OpenMP's thread count is per thread (a pool thread takes torch's global count at its first parallel op
        # and keeps it): set it here too, before this worker's sigmoid. The caller restores the global count
        # after every worker has finished.
        torch.set_num_threads(1)
        buf = torch.empty(n * rows * ww, dtype=torch.float32)
        while True:
            with lock:
                r0 = next(starts, None)
            if r0 is None:
                return
            m = min(r0 + rows, hh) - r0
            chunk = buf[:n * m * ww].view(n, m, ww)
            dst = chunk.numpy()
            kernels.bilinear_resize(src, dst, n, h, w, hh, ww, mode, r0, r0 + m, r0)
            chunk.sigmoid_()
            kernels.query_assign(dst, scores, n, m, ww, threshold, foreground_of_weighted,
                                 result.owner[r0:r0 + m].numpy(),
                                 result.owner_foreground[r0:r0 + m].view(torch.uint8).numpy(), *areas, 0, m)

    threads_before = torch.get_num_threads()
    threads = max(1, min(threads_before, -(-hh // rows)))
    torch.set_num_threads(1)  # each step of a chunk on its worker's thread
    try:
        run_threads(worker, threads)
    finally:
        torch.set_num_threads(threads_before)


@torch.no_grad()
def paste_in_order(claims: torch.Tensor, allowed: torch.Tensor,
                   overlap_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste binary masks onto an empty canvas in index order, each onto the pixels still free.

    Mask ``k`` is pasted iff ``allowed[k]`` and its free pixels number ``> overlap_threshold * its pixels`` (in
    float32, as deeplab2's maskwise rule). Whether a mask is pasted depends on the earlier ones, so the decisions
    are sequential; they are taken on a small table (the claim sets of the pixels claimed by several masks, with
    their pixel counts), and each pixel then goes to the first pasted mask claiming it. The tests compare
    it with deeplab2's canvas loop (``tests/maskformer_refs.py::paste_loop``).

    Args:
        claims: ``(n, H, W)`` bool masks, in paste order; they may overlap.
        allowed: ``(n,)`` bool: masks that may be pasted at all.
        overlap_threshold: The fraction of a mask's pixels that must still be free (strict ``>``).

    Returns:
        ``owner``: ``(H, W)`` int64 pasted mask covering each pixel (``n``: none); ``pasted``: ``(n,)`` bool.
    """
    n, h, w = (int(v) for v in claims.shape)
    dev = claims.device
    flat = claims.reshape(n, h * w).contiguous().view(torch.uint8)  # 0 / 1 bytes: no widening copies below
    narrow = n < 255  # per-pixel counts and codes fit in a byte
    area = _count_rows(flat)
    limit = (area.float() * torch.tensor(overlap_threshold, dtype=torch.float32)).tolist()  # one host sync
    count = flat.sum(0, dtype=torch.uint8) if narrow else flat.sum(0, dtype=torch.int32)
    of_mask, sizes = _claim_groups(flat, count)
    pasted_list = _paste_decisions(allowed.tolist(), area.tolist(), limit, of_mask, sizes)
    pasted = torch.tensor(pasted_list, dtype=torch.bool, device=dev)
    # the first pasted claimant: weight n - k for a pasted mask k, 0 otherwise; the largest weight claiming wins
    weight = torch.where(pasted, torch.arange(n, 0, -1, device=dev), 0).view(-1, 1)
    if narrow:
        top = (flat * weight.to(torch.uint8)).amax(0).long()
    else:
        top = (flat.long() * weight).amax(0)
    owner = torch.where(top == 0, n, n - top).view(h, w)
    return owner, pasted


def _claim_groups(flat: torch.Tensor, count: torch.Tensor) -> tuple[list[list[int]], list[int]]:
    """The pixels claimed by several masks, grouped by their claim set.

    Args:
        flat: ``(n, L)`` 0 / 1 uint8 masks.
        count: ``(L,)`` masks claiming each pixel.

    Returns:
        Per mask, the groups it belongs to, and per group its pixel count.
    """
    n = int(flat.shape[0])
    shared = torch.nonzero(count >= 2)[:, 0]
    of_mask: list[list[int]] = [[] for _ in range(n)]
    if not shared.numel():
        return of_mask, []
    rank = torch.arange(n, device=flat.device).view(-1, 1)
    code = torch.where(flat[:, shared].bool(), rank, n)  # (n, P): the ranks claiming each shared pixel
    m = int(count.max())  # most masks claiming one pixel: the claim set is its m smallest ranks
    first = code.topk(m, 0, largest=False).values  # (m, P), ascending
    sets, sizes_t = torch.unique(first, dim=1, return_counts=True)
    for g, col in enumerate(sets.t().tolist()):
        for r in col:
            if r < n:
                of_mask[r].append(g)
    return of_mask, sizes_t.tolist()


def _paste_decisions(ok: list[bool], areas: list[int], limit: list[float], of_mask: list[list[int]],
                     sizes: list[int]) -> list[bool]:
    """Which masks are pasted, in order: sequential by nature, as a mask's free area depends on which earlier
    masks were pasted (a group's pixels are on the canvas once one of its masks is)."""
    taken = [False] * len(sizes)
    pasted = [False] * len(ok)
    for k in range(len(ok)):
        if not ok[k] or areas[k] == 0:
            continue
        free = areas[k] - sum(sizes[g] for g in of_mask[k] if taken[g])
        if free > limit[k]:
            pasted[k] = True
            for g in of_mask[k]:
                taken[g] = True
    return pasted


def _count_rows(x: torch.Tensor) -> torch.Tensor:
    """``(n,)`` int64 row sums of an ``(n, L)`` 0 / 1 uint8 tensor: byte sums over blocks of 255 (no overflow, no
    widened copy of ``x``), then the blocks in int64."""
    n, length = (int(v) for v in x.shape)
    blocks = length // 255
    out = x[:, blocks * 255:].sum(1, dtype=torch.int64)
    if blocks:
        out += x[:, :blocks * 255].reshape(n, blocks, 255).sum(2, dtype=torch.uint8).sum(1, dtype=torch.int64)
    return out


@torch.no_grad()
def kmax_paste_order(mask_logits: torch.Tensor, class_probability: torch.Tensor, mask_threshold: float,
                     reorder_weights: tuple[float, float]) -> torch.Tensor:
    """deeplab2's maskwise order: slots by ``class_probability ** a * mask_score ** b``, descending, stable.

    Args:
        mask_logits: ``(Q, h, w)`` float32 slot logits at the model's resolution (deeplab2 scores before resizing).
        class_probability: ``(Q,)`` best class probability ("no object" excluded).
        mask_threshold: A pixel is in a slot's mask iff the slot's softmax over slots is ``> mask_threshold``.
        reorder_weights: ``(a, b)``.

    Returns:
        ``(Q,)`` int64 slot indices, first pasted first.
    """
    probs = torch.softmax(mask_logits, 0)
    inside = probs > mask_threshold
    total = torch.where(inside, probs, 0.0).sum((1, 2))
    count = inside.sum((1, 2))
    mask_score = torch.where(count > 0, total / count.clamp(min=1).float(), 0.0)  # deeplab2's divide_no_nan
    a, b = reorder_weights
    return torch.argsort(class_probability ** a * mask_score ** b, descending=True, stable=True)
