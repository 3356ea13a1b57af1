"""Bilinear resizing of mask stacks, bit-identical to ``F.interpolate`` (the query fusions' upsampling)."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .rows import as_native, run_rows
from .switch import native_kernels

__all__ = ["native_resize_mode", "resize_bilinear", "resize_each"]

#: torch's CPU kernel takes other routes, with other arithmetic, when the output's ``H + W`` is at most this, for
#: exactly 3 channels on one thread (separable passes) and for channels-last inputs of more than 3 channels (which
#: a contiguous ``(1, n, 1, 1)`` is); those calls stay with torch. (1 x 1 masks are resized as torch resizes ``x``
#: itself: the channels-last route of a larger batch of them is not emulated.)
_SEPARABLE_MAX = 128


@torch.no_grad()
def resize_bilinear(x: torch.Tensor, size: tuple[int, int], channels: int | None = None) -> torch.Tensor:
    """``F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]``, bit for bit, as torch
    computes it when ``x`` is part of a batch of ``channels`` maps.

    Each map is resized on its own, but torch's CPU kernel picks its arithmetic by the number of maps (exactly 3
    maps on one thread take a separable route whose results differ in the last bit), so the kept masks of a model's
    ``Q`` masks are resized here as the reference code, which resizes all ``Q``, resizes them.

    Args:
        x: ``(n, h, w)`` floating-point masks, ``n >= 1``.
        size: ``(H, W)`` output size.
        channels: Size of the batch ``x`` stands for (``>= n``); default ``n``.

    Returns:
        ``(n, H, W)`` resized masks (a new tensor).

    Example:
        >>> x = torch.arange(4.0).view(1, 2, 2)
        >>> resize_bilinear(x, (2, 4))
        tensor([[[0.0000, 0.2500, 0.7500, 1.0000],
                 [2.0000, 2.2500, 2.7500, 3.0000]]])
    """
    n, h, w = (int(v) for v in x.shape)
    batch = n if channels is None else int(channels)
    mode = native_resize_mode(x, size, batch)
    if mode is None:  # the specification: torch, given as many maps as needed to take the batch's route
        pad = _maps_for_route(n, batch, size) - n
        if pad:
            x = torch.cat([x, x.new_zeros(pad, h, w)])
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0, :n]
    out = torch.empty(n, size[0], size[1], dtype=x.dtype)
    src, dst, kernels = as_native(x), out.numpy(), native_kernels()
    run_rows(lambda r0, r1, cnt, ch: kernels.bilinear_resize(src, dst, n, h, w, size[0], size[1], mode, r0, r1, 0,
                                                              cnt, ch), size[0])
    return out


@torch.no_grad()
def resize_each(x: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """``F.interpolate(x[i][None, None], size=sizes[i], mode="bilinear", align_corners=False)[0, 0]`` for every
    map ``i``, bit for bit: each map resized on its own to its own size (the ROI masks pasted into their boxes).

    The C kernel resizes all maps whose output torch resizes by its generic route (``H + W`` above
    :data:`_SEPARABLE_MAX`) in one call; the others, and every map when the kernel does not apply, go to torch.

    Args:
        x: ``(n, h, w)`` floating-point maps.
        sizes: ``n`` output sizes ``(H, W)``, each at least ``(1, 1)``.

    Returns:
        ``n`` tensors of shape ``sizes[i]`` (new memory).

    Example:
        >>> out = resize_each(torch.arange(4.0).view(1, 2, 2), [(2, 4)])
        >>> out[0]
        tensor([[0.0000, 0.2500, 0.7500, 1.0000],
                [2.0000, 2.2500, 2.7500, 3.0000]])
    """
    n, h, w = (int(v) for v in x.shape)
    if len(sizes) != n or any(hh < 1 or ww < 1 for hh, ww in sizes):
        raise ValueError(f"resize_each needs one output size of at least (1, 1) per map: {n} maps, sizes {sizes}.")
    out: list[torch.Tensor | None] = [None] * n
    contract = _native_contract(x)
    if contract is not None:
        # each map in its own tensor (not views of one block, which would keep the block alive with any of them)
        dsts = [torch.empty(size, dtype=x.dtype) if size[0] + size[1] > _SEPARABLE_MAX else None for size in sizes]
        if any(d is not None for d in dsts):
            native_kernels().bilinear_resize_each(as_native(x), [None if d is None else d.numpy() for d in dsts],
                                                  n, h, w, contract)
            out = dsts
    for i in range(n):
        if out[i] is None:  # the specification (and torch's other routes)
            out[i] = F.interpolate(x[i][None, None], size=sizes[i], mode="bilinear", align_corners=False)[0, 0]
    return out  # type: ignore[return-value]


def _native_contract(x: torch.Tensor) -> int | None:
    """The C resize's ``contract`` for maps ``x`` ``(n, h, w)``, or ``None`` if the kernel does not apply (backend,
    device, dtype, layout, or a torch whose arithmetic the kernel does not reproduce)."""
    if native_kernels() is None or as_native(x, 3) is None or x.shape[0] < 1 or max(x.shape) >= 1 << 31:
        return None
    return _torch_contraction()


def _maps_for_route(n: int, batch: int, size: tuple[int, int]) -> int:
    """How many maps to hand torch so that ``n`` of them are resized as in a batch of ``batch``: ``n`` itself
    unless the two counts are on different sides of torch's 3-maps-on-one-thread rule."""
    if torch.get_num_threads() != 1 or size[0] + size[1] <= _SEPARABLE_MAX or (n == 3) == (batch == 3):
        return n
    return 3 if batch == 3 else 4


def native_resize_mode(x: torch.Tensor, size: tuple[int, int], channels: int | None = None) -> int | None:
    """The ``contract`` argument of the C resize that reproduces torch's kernel for this call (``x`` standing for
    a batch of ``channels`` maps, default its own count), or ``None`` when the call must stay with torch (backend,
    device, dtype, or one of the shapes torch resizes by another route)."""
    contract = _native_contract(x)
    if contract is None:
        return None
    n, h, w = (int(v) for v in x.shape)
    batch = n if channels is None else int(channels)
    if min(h, w, size[0], size[1]) < 1 or max(size) >= 1 << 31 or size[0] + size[1] <= _SEPARABLE_MAX:
        return None
    if (batch == 3 and torch.get_num_threads() == 1) or (h == 1 and w == 1 and batch > 3):
        return None
    return contract


@functools.cache
def _torch_contraction() -> int | None:
    """Which arithmetic this machine's torch build uses for bilinear resizing: 1 if it contracts into FMAs (its
    AVX2 build), 0 if not (its baseline build), ``None`` if the C kernel reproduces neither (then torch is used).

    Checked once per process against ``F.interpolate`` on a few random up- and down-samplings.
    """
    kernels = native_kernels()
    if kernels is None:
        return None
    rng = np.random.default_rng(0)
    cases = [((4, 37, 53), (301, 199)), ((2, 96, 96), (200, 304)), ((5, 61, 40), (33, 170))]
    for mode in (1, 0):
        ok = True
        for shape, (hh, ww) in cases:
            x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            ref = F.interpolate(x[None], size=(hh, ww), mode="bilinear", align_corners=False)[0]
            out = torch.empty_like(ref)
            kernels.bilinear_resize(x.numpy(), out.numpy(), shape[0], shape[1], shape[2], hh, ww, mode, 0, hh, 0)
            ok = ok and torch.equal(out, ref)
        if ok:
            return mode
    return None
