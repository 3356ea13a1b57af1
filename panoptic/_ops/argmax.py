"""First argmax over channels, folded to "which of the first ``k`` channels, or none of them"."""

from __future__ import annotations

import torch

from ..fusion.base import FiniteCheck
from .rows import as_native, row_bands, run_rows
from .switch import native_kernels

__all__ = ["first_argmax", "first_argmax_keys", "first_max", "sample_grid"]


@torch.no_grad()
def first_argmax_keys(logits: torch.Tensor, num_first: int, out: torch.Tensor, samples: torch.Tensor | None = None,
                      stride: int = 1, finite: FiniteCheck | None = None) -> None:
    """Per pixel, the first maximum over all channels if it is one of the first ``num_first``, else ``num_first``.

    Equals ``torch.where(a < k, a, k)`` with ``a = logits.argmax(0)`` and ``k = num_first`` (first maximum on
    ties), e.g. the stuff class of a pixel whose semantic argmax is a stuff channel, or ``num_stuff`` for "some
    thing class".

    Args:
        logits: ``(C, H, W)`` floating-point logits, any strides.
        num_first: ``k`` in ``0 .. C``.
        out: ``(H, W)`` integer tensor on the same device, written in full.
        samples: Optional ``(C, ceil(H / stride), ceil(W / stride))`` tensor, filled with
            ``logits[:, ::stride, ::stride]`` (the C pass copies them while the rows are in cache).
        stride: Sampling stride of ``samples``.
        finite: Optional check the logits are handed to (the caller then calls its ``raise_if_not_finite``).
    """
    c, h, w = logits.shape
    k = int(num_first)
    if not 0 <= k <= c:
        raise ValueError(f"num_first must be in 0..{c}, got {k}.")
    kernels = native_kernels()
    src = as_native(logits, 3) if kernels is not None else None
    smp = None if samples is None else as_native(samples)
    if src is not None and out.dtype == torch.int32 and out.is_contiguous() and (samples is None or smp is not None):
        dst = out.numpy()
        ok = run_rows(lambda r0, r1, cnt, ch: kernels.first_argmax_keys(src, dst, c, h, w, k, r0, r1, smp, stride,
                                                                         cnt, ch), h)
        if finite is not None:
            finite.add_flag(ok)
        return
    # The specification, band by band (see row_bands).
    for r0, r1 in row_bands(logits):
        band = logits[:, r0:r1]
        if finite is not None:
            finite.add(band)  # while the band is in cache
        if samples is not None:
            sample_grid(logits, samples, stride, r0, r1)
        out[r0:r1] = first_argmax(band, dtype=torch.int32).clamp_(max=k) if k else 0  # int32: keys < C


def first_argmax(x: torch.Tensor, x_max: torch.Tensor | None = None, *,
                 dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``x.argmax(0)`` of ``(C, H, W)`` logits (the first maximum on ties) as ``(H, W)`` integers.

    ``argmax`` over the leading dimension is not vectorised on the CPU (about 30x a pass of ``amax``), so for up to
    :data:`_EXACT_CHANNELS` channels the index comes from vectorised operations: the channels ``c`` reaching the
    maximum contribute ``2**-c`` to a sum, and the sum's binary exponent is ``-(first such c)``. Powers of two
    that fit the float32 significand add exactly in any order, so ties resolve as in ``argmax``.

    Args:
        x: ``(C, H, W)`` logits.
        x_max: ``x.amax(0)`` if the caller has it already ``(H, W)``.
        dtype: ``torch.int64`` (as ``argmax``) or ``torch.int32`` (half the memory traffic for a caller that
            keeps working on the indices).
    """
    c = int(x.shape[0])
    if c > _EXACT_CHANNELS or c == 0:
        # max's indices are argmax's (first maximum, NaN wins) and run 3-4x faster on the CPU
        return x.max(0).indices.to(dtype)
    if x_max is None:
        x_max = x.amax(0)
    # 1.0 where a channel reaches the maximum; written as float directly (a bool result and a cast cost 5x more)
    at_max = torch.eq(x, x_max, out=torch.empty(x.shape, dtype=torch.float32, device=x.device)).reshape(c, -1)
    weights = torch.pow(2.0, -torch.arange(c, dtype=torch.float32, device=x.device))
    total = (weights @ at_max).reshape(x.shape[1:])
    # The sum lies in [2**-c, 2**(1 - c)) for the first maximum c, so its float32 bit pattern has the biased exponent
    # field 127 - c (bits 23..30, cheaper than frexp), and (2**30 - 1 - bits) >> 23 is c.
    index = torch.rsub(total.view(torch.int32), (1 << 30) - 1).bitwise_right_shift_(23)
    return index if dtype == torch.int32 else index.to(dtype)


def first_max(x: torch.Tensor, *, dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(0)`` of finite ``(C, H, W)`` logits: the maximum ``(H, W)`` and the first channel reaching it
    ``(H, W)`` (callers check finiteness: up to :data:`_EXACT_CHANNELS` channels a NaN gives no defined index).

    Beyond :data:`_EXACT_CHANNELS` channels one ``max`` gives both (no separate ``amax`` pass); up to it, ``amax``
    and :func:`first_argmax`, which is faster than ``max`` there.

    Example:
        >>> values, index = first_max(torch.tensor([[[1.0, 3.0]], [[2.0, 3.0]]]))
        >>> values.tolist(), index.tolist()
        ([[2.0, 3.0]], [[1, 0]])
    """
    if int(x.shape[0]) > _EXACT_CHANNELS:
        values, index = x.max(0)
        return values, index.to(dtype)
    x_max = x.amax(0)
    return x_max, first_argmax(x, x_max, dtype=dtype)


#: Most channels :func:`first_argmax` sums exactly in float32: ``2**0 .. 2**-23`` fit its 24-bit significand.
_EXACT_CHANNELS = 24


def sample_grid(logits: torch.Tensor, samples: torch.Tensor, stride: int, row0: int = 0,
                row1: int | None = None) -> None:
    """Copy ``logits[:, ::stride, ::stride]`` ``(C, ceil(H / stride), ceil(W / stride))`` into ``samples``, or only
    its rows that lie in the image rows ``row0 .. row1 - 1`` (a pass working band by band samples each band while
    it is in cache: about 2% of UPSNet's torch path at 1024x2048).

    Example:
        >>> x = torch.arange(30.0).view(1, 5, 6)
        >>> s = torch.zeros(1, 3, 3)
        >>> sample_grid(x, s, 2, 2, 5)  # rows 2 and 4 of the image: sample rows 1 and 2
        >>> s[0].tolist()
        [[0.0, 0.0, 0.0], [12.0, 14.0, 16.0], [24.0, 26.0, 28.0]]
    """
    h = int(logits.shape[-2])
    row1 = h if row1 is None else min(int(row1), h)
    first = -(-int(row0) // stride) * stride  # the first sampled row at or after row0
    if first < row1:
        samples[:, first // stride:-(-row1 // stride)].copy_(logits[:, first:row1:stride, ::stride])
