"""UPSNet's panoptic argmax, box-local: the winning channel of every pixel as a small integer key."""

from __future__ import annotations

import numpy as np
import torch

from ..fusion.base import FiniteCheck, scratch
from .argmax import first_max, sample_grid
from .keys import count_keys
from .rows import as_native, row_bands, run_rows
from .switch import native_kernels

__all__ = ["instance_max", "upsnet_keys"]

Region = tuple[int, int, int, int]


@torch.no_grad()
def upsnet_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                samples: torch.Tensor | None = None, stride: int = 1, finite: FiniteCheck | None = None,
                counts: torch.Tensor | None = None) -> None:
    """Write the key of the first maximal panoptic channel of every pixel into ``out``.

    The channels are UPSNet's ``[X_stuff, Y_i + M_i for each instance i, U]`` (see
    :class:`~panoptic.fusion.UPSNetFusion`): ``Y_i`` is semantic channel ``channels[i]`` inside ``crop[i]``,
    ``M_i`` the mask logits ``masks[i]`` in the top-left ``paste[i]`` part of it, both 0 outside, and
    ``U = max over thing channels - max_i Y_i`` when ``unknown``. First maximum wins (stuff, then instances in
    order, then unknown).

    Keys: stuff channel ``k`` -> ``k``; instance ``i`` -> ``Nst + i`` or, with ``pairs``,
    ``Nst + i * (Nst + 1) + c`` with ``c`` the semantic argmax if it is a stuff class and ``c = Nst`` if it is a
    thing class; unknown (and "no channel at all") -> ``Nst + N * step``.

    Args:
        sem: ``(C, H, W)`` semantic logits, stuff channels first.
        crop: ``N`` half-open ``(y0, y1, x0, x1)`` crop boxes inside the image.
        paste: ``N`` paste boxes, each the top-left part of its crop box (or empty).
        masks: ``N`` mask logits, mask ``i`` of shape ``(y1 - y0, x1 - x0)`` of ``paste[i]``.
        channels: ``N`` semantic channel of each instance's class.
        num_stuff: ``Nst``.
        pairs: Key instances together with the semantic class (for the class assignment).
        unknown: Include the unknown channel.
        out: ``(H, W)`` integer output (int32 for the C kernel), written in full.
        samples: Optional ``(C, ceil(H / stride), ceil(W / stride))`` tensor for ``sem[:, ::stride, ::stride]``.
        stride: Sampling stride.
        finite: Optional check the logits are handed to.
        counts: Optional ``(Nst + N * step + 1,)`` int64 output: the number of pixels of every key,
            ``count_keys(out, Nst + N * step + 1)`` (the C kernel counts each block of keys while it is in cache).
    """
    n = len(crop)
    q = num_stuff + n * (num_stuff + 1 if pairs else 1) + 1
    if counts is not None and (counts.shape != (q,) or counts.dtype != torch.int64):
        raise ValueError(f"counts must be a ({q},) int64 tensor, got {tuple(counts.shape)} {counts.dtype}.")
    args = (sem, crop, paste, masks, channels, num_stuff, pairs, unknown, out, samples, stride, finite)
    if _native_keys(*args, counts):
        return
    _torch_keys(*args)  # the specification
    if counts is not None:
        counts.copy_(count_keys(out, q))


def _native_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                 channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                 samples: torch.Tensor | None, stride: int, finite: FiniteCheck | None,
                 counts: torch.Tensor | None = None) -> bool:
    """:func:`upsnet_keys` with the C kernel; ``False`` (nothing written) where it does not apply."""
    c, h, w = (int(s) for s in sem.shape)
    nst, n = int(num_stuff), len(crop)
    step = nst + 1 if pairs else 1
    unk = nst + n * step
    kernels = native_kernels()
    src = as_native(sem, 3) if kernels is not None else None
    smp = None if samples is None else as_native(samples)
    mbuf = None
    if src is not None and (samples is None or smp is not None) and out.dtype == torch.int32 and out.is_contiguous():
        mbuf = [as_native(m.contiguous()) if m.numel() else _NO_MASK for m in masks]
    cbuf = None
    if counts is not None:
        cbuf = counts.zero_().numpy() if counts.device.type == "cpu" and counts.is_contiguous() else None
    if (mbuf is not None and all(m is not None for m in mbuf) and unk < (1 << 31) - 1
            and (counts is None or cbuf is not None)):
        geometry = _native_geometry(crop, paste, h, w, channels)
        dst = out.numpy()
        ok = run_rows(lambda r0, r1, cnt, ch: kernels.upsnet_keys(src, dst, c, h, w, nst, r0, r1, geometry, mbuf, step,
                                                                   unk, pairs, unknown, smp, stride, cnt, ch, cbuf), h)
        if finite is not None:
            finite.add_flag(ok)
        return True
    return False


def _torch_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                samples: torch.Tensor | None, stride: int, finite: FiniteCheck | None) -> None:
    """:func:`upsnet_keys` in plain torch: the instance channels reduced box by box over the whole image, then
    the per-pixel rule band by band (see :func:`row_bands`)."""
    n = len(crop)
    unk = num_stuff + n * (num_stuff + 1 if pairs else 1)
    inst = instance_max(sem, crop, paste, masks, channels) if n else None
    for r0, r1 in row_bands(sem):
        if finite is not None:
            finite.add(sem[:, r0:r1])  # while the band is in cache
        if samples is not None:
            sample_grid(sem, samples, stride, r0, r1)
        band = None if inst is None else tuple(t[r0:r1] for t in inst)
        out[r0:r1] = keys_rule(sem[:, r0:r1], band, n, num_stuff, pairs, unknown, unk)


def keys_rule(sem: torch.Tensor, inst: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, n: int,
              num_stuff: int, pairs: bool, unknown: bool, unk: int) -> torch.Tensor:
    """The keys of :func:`upsnet_keys` from ``sem`` ``(C, H, W)`` and the instance reduction ``inst`` of
    :func:`instance_max` (``None`` without instances): the specification the C kernel matches.

    Returns:
        ``(H, W)`` int32 keys; ``unk`` is the unknown key.
    """
    c, h, w = (int(s) for s in sem.shape)
    nst = int(num_stuff)
    step = nst + 1 if pairs else 1
    smax = sidx = tmax = None
    if nst:
        smax, sidx = first_max(sem[:nst], dtype=torch.int32)  # int32 throughout: half the traffic
    if c > nst:
        tmax = sem[nst:].amax(0)
    if inst is None:
        if sidx is None:
            return torch.full((h, w), unk, dtype=torch.int32, device=sem.device)  # unknown, or no channel at all
        if unknown and tmax is not None:
            return torch.where(smax >= tmax, sidx, unk)  # U = max thing - 0
        return sidx
    ival, first, ymax = inst
    key = torch.add(nst, first, alpha=step)  # nst + first * step, one pass
    if pairs:  # the pixel's semantic class: a stuff class if it is the semantic argmax, else "a thing" (Nst)
        key += torch.where(smax >= tmax, sidx, nst) if smax is not None else nst
    return keys_from_maxima(key, ival, ymax, tmax if unknown else None, smax, sidx, unk)


def keys_from_maxima(inst_key: torch.Tensor, ival: torch.Tensor, ymax: torch.Tensor, tmax: torch.Tensor | None,
                     smax: torch.Tensor | None, sidx: torch.Tensor | None, unk: int) -> torch.Tensor:
    """UPSNet's panoptic argmax of every pixel from the maxima of its channel groups: the one statement of the
    decision for the eager specification (:func:`keys_rule`) and the exported graph
    (:class:`~panoptic.fusion.upsnet_graph.UPSNetGraph`); the C kernel implements the same.

    Over ``[X_stuff, Z_i for each instance i, U]`` the first maximum wins: a stuff channel if ``smax`` reaches the
    best of the rest, else the instance if ``ival`` reaches ``U = tmax - ymax``, else unknown. All tensors have
    one shape (``(H, W)``, or ``(B, H, W)`` in the graph).

    Args:
        inst_key: Key of the first instance reaching ``ival`` (integer).
        ival: ``max_i Z_i``.
        ymax: ``max_i Y_i`` (0 where no crop box covers the pixel).
        tmax: Maximum of the thing channels of the semantic logits; ``None`` without the unknown channel.
        smax: Maximum of the stuff channels; ``None`` without stuff channels.
        sidx: The first stuff channel reaching ``smax`` (integer, as ``inst_key``); ``None`` with ``smax``.
        unk: The unknown key.

    Example:
        >>> t = lambda *v: torch.tensor(v)
        >>> keys_from_maxima(t(5, 5, 5), t(1.0, 1.0, 0.0), t(0.0, 0.0, 0.0), t(0.5, 0.5, 0.5), t(1.0, 0.0, 0.0),
        ...                  t(2, 2, 2), 9).tolist()  # stuff on a tie, the instance, unknown above the instance
        [2, 5, 9]
    """
    key, best = inst_key, ival
    if tmax is not None:  # U comes after the instances: they win ties
        u = tmax - ymax
        key = torch.where(ival >= u, key, unk)
        best = torch.maximum(ival, u)
    if smax is not None:  # the stuff channels come first: they win ties
        key = torch.where(smax >= best, sidx, key)
    return key


def instance_max(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                 channels: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, over the ``N >= 1`` instance channels ``Z_i = Y_i + M_i``: the maximum, the first instance
    reaching it (int32) and ``max_i Y_i``, each ``(H, W)``, in scratch buffers (see
    :func:`~panoptic.fusion.base.scratch`): use them before the next call.

    Box-local. Outside its crop box a channel is 0, and that 0 can raise a pixel's running maximum only where
    every earlier box covered the pixel (elsewhere an earlier channel already gave it a 0): the intersection of
    boxes ``0 .. i-1`` (a rectangle, soon empty) minus box ``i``.
    """
    h, w = int(sem.shape[1]), int(sem.shape[2])
    ival = scratch("upsnet.ival", (h, w), sem.dtype, sem.device).zero_()
    ymax = scratch("upsnet.ymax", (h, w), sem.dtype, sem.device).zero_()
    first = scratch("upsnet.first", (h, w), torch.int32, sem.device).zero_()
    common = (0, h, 0, w)  # pixels covered by the crop boxes of all instances so far
    for i, (cbox, pbox) in enumerate(zip(crop, paste, strict=True)):
        if i:
            for y0, y1, x0, x1 in rect_minus(common, cbox):  # channel i's 0 enters the maximum here
                iv = ival[y0:y1, x0:x1]
                first[y0:y1, x0:x1].masked_fill_(iv < 0, i)
                iv.clamp_(min=0)
                ymax[y0:y1, x0:x1].clamp_(min=0)
        common = rect_and(common, cbox)
        cy0, cy1, cx0, cx1 = cbox
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        y = sem[channels[i], cy0:cy1, cx0:cx1]
        if masks[i].shape == y.shape:
            z = y + masks[i]
        else:  # the paste box is the crop box's top-left part (round vs trunc at the far edges), or empty
            z = y.clone()
            if masks[i].numel():
                z[:pbox[1] - pbox[0], :pbox[3] - pbox[2]] += masks[i]
        iv, ym = ival[cy0:cy1, cx0:cx1], ymax[cy0:cy1, cx0:cx1]
        if i == 0:
            iv.copy_(z)
            ym.copy_(y)
            continue
        first[cy0:cy1, cx0:cx1].masked_fill_(z > iv, i)  # strict: the first maximum stays
        torch.maximum(iv, z, out=iv)
        torch.maximum(ym, y, out=ym)
    return ival, first, ymax


def rect_and(a: Region, b: Region) -> Region:
    """Intersection of two half-open ``(y0, y1, x0, x1)`` rectangles (possibly empty)."""
    return max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])


def rect_minus(a: Region, b: Region) -> list[Region]:
    """``a`` minus ``b`` as at most four disjoint non-empty rectangles."""
    y0, y1, x0, x1 = a
    if y1 <= y0 or x1 <= x0:
        return []
    iy0, iy1, ix0, ix1 = rect_and(a, b)
    if iy1 <= iy0 or ix1 <= ix0:
        return [a]
    parts = [(y0, iy0, x0, x1), (iy1, y1, x0, x1), (iy0, iy1, x0, ix0), (iy0, iy1, ix1, x1)]
    return [r for r in parts if r[1] > r[0] and r[3] > r[2]]


def _native_geometry(crop: list[Region], paste: list[Region], h: int, w: int, channels: list[int]) -> np.ndarray | None:
    """The instances for the C kernel: an ``(N, 23)`` int64 table (crop box, mask size, the up to four rectangles
    where the instance's 0 enters the maximum, channel); ``None`` without instances."""
    if not crop:
        return None
    rows = []
    common = (0, h, 0, w)
    for i, (cbox, pbox) in enumerate(zip(crop, paste, strict=True)):
        zero = rect_minus(common, cbox) if i else []
        common = rect_and(common, cbox)
        ph, pw = max(0, pbox[1] - pbox[0]), max(0, pbox[3] - pbox[2])
        if not ph or not pw:
            ph = pw = 0
        flat = [v for r in zero for v in r] + [0] * (4 * (4 - len(zero)))
        rows.append([*cbox, ph, pw, *flat, channels[i]])
    return np.asarray(rows, dtype=np.int64)


_NO_MASK = np.zeros(0, dtype=np.float32)
