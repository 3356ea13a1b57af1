"""UPSNet's panoptic argmax, box-local: the winning channel of every pixel as a small integer key."""

from __future__ import annotations

import numpy as np
import torch

from ..fusion.base import FiniteCheck
from .argmax import first_argmax, sample_grid
from .rows import as_native, run_rows
from .switch import native_kernels

__all__ = ["instance_max", "upsnet_keys"]

Region = tuple[int, int, int, int]


@torch.no_grad()
def upsnet_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                samples: torch.Tensor | None = None, stride: int = 1, finite: FiniteCheck | None = None) -> None:
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
    """
    args = (sem, crop, paste, masks, channels, num_stuff, pairs, unknown, out, samples, stride, finite)
    if not _native_keys(*args):
        _torch_keys(*args)  # the specification


def _native_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                 channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                 samples: torch.Tensor | None, stride: int, finite: FiniteCheck | None) -> bool:
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
    if mbuf is not None and all(m is not None for m in mbuf) and unk < 1 << 31:
        geometry = _native_geometry(crop, paste, h, w, channels)
        dst = out.numpy()
        ok = run_rows(lambda r0, r1, cnt, ch: kernels.upsnet_keys(src, dst, c, h, w, nst, r0, r1, geometry, mbuf, step,
                                                                   unk, pairs, unknown, smp, stride, cnt, ch), h)
        if finite is not None:
            finite.add_flag(ok)
        return True
    return False


def _torch_keys(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                channels: list[int], num_stuff: int, pairs: bool, unknown: bool, out: torch.Tensor,
                samples: torch.Tensor | None, stride: int, finite: FiniteCheck | None) -> None:
    """:func:`upsnet_keys` in plain torch: the specification the C kernel matches."""
    c = int(sem.shape[0])
    nst, n = int(num_stuff), len(crop)
    step = nst + 1 if pairs else 1
    unk = nst + n * step
    if finite is not None:
        finite.add(sem)
    if samples is not None:
        sample_grid(sem, samples, stride)
    dev = sem.device
    smax = sidx = tmax = None
    if nst:
        smax, sidx = sem[:nst].amax(0), first_argmax(sem[:nst])
    if c > nst:
        tmax = sem[nst:].amax(0)
    unk_t = torch.tensor(unk, device=dev)
    if n == 0:
        if sidx is None:
            out.fill_(unk)  # only unknown, or no channel at all
        elif unknown and tmax is not None:
            out.copy_(torch.where(smax >= tmax, sidx, unk_t))  # U = max thing - 0
        else:
            out.copy_(sidx)
        return
    ival, first, ymax = instance_max(sem, crop, paste, masks, channels)
    key = nst + first * step
    if pairs:  # the pixel's semantic class: a stuff class if it is the semantic argmax, else "a thing" (Nst)
        key += torch.where(smax >= tmax, sidx, nst) if smax is not None else nst
    best = ival
    if unknown:
        u = tmax - ymax
        key = torch.where(ival >= u, key, unk_t)
        best = torch.maximum(ival, u)
    if smax is not None:
        key = torch.where(smax >= best, sidx, key)
    out.copy_(key)


def instance_max(sem: torch.Tensor, crop: list[Region], paste: list[Region], masks: list[torch.Tensor],
                 channels: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, over the ``N >= 1`` instance channels ``Z_i = Y_i + M_i``: the maximum, the first instance
    reaching it (int64) and ``max_i Y_i``, each ``(H, W)``.

    Box-local. Outside its crop box a channel is 0, and that 0 can raise a pixel's running maximum only where
    every earlier box covered the pixel (elsewhere an earlier channel already gave it a 0): the intersection of
    boxes ``0 .. i-1`` (a rectangle, soon empty) minus box ``i``.
    """
    h, w = int(sem.shape[1]), int(sem.shape[2])
    ival = sem.new_zeros(h, w)
    ymax = sem.new_zeros(h, w)
    first = torch.zeros(h, w, dtype=torch.int64, device=sem.device)
    common = (0, h, 0, w)  # pixels covered by the crop boxes of all instances so far
    for i, (cbox, pbox) in enumerate(zip(crop, paste, strict=True)):
        if i:
            for y0, y1, x0, x1 in rect_minus(common, cbox):  # channel i's 0 enters the maximum here
                iv = ival[y0:y1, x0:x1]
                first[y0:y1, x0:x1] = torch.where(iv < 0, i, first[y0:y1, x0:x1])
                iv.clamp_(min=0)
                ymax[y0:y1, x0:x1].clamp_(min=0)
        common = rect_and(common, cbox)
        cy0, cy1, cx0, cx1 = cbox
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        y = sem[channels[i], cy0:cy1, cx0:cx1]
        z = y.clone()
        if masks[i].numel():  # the paste box is the crop box's top-left part (round vs trunc at the far edges)
            z[:pbox[1] - pbox[0], :pbox[3] - pbox[2]] += masks[i]
        iv, ym = ival[cy0:cy1, cx0:cx1], ymax[cy0:cy1, cx0:cx1]
        if i == 0:
            iv.copy_(z)
            ym.copy_(y)
            continue
        first[cy0:cy1, cx0:cx1] = torch.where(z > iv, i, first[cy0:cy1, cx0:cx1])  # strict: first maximum
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
