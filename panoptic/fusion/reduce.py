"""Fast per-pixel reductions over the channel dimension of ``(C, H, W)`` logits, shared by the fusions.

``torch.argmax(x, 0)`` (and ``torch.max(x, 0)``) over the channels of a ``(C, H, W)`` CPU tensor is not
vectorised and costs many times a pass of ``amax``. The same first-maximum index comes from vectorised
operations only (:func:`first_index_of`): the maximum ``m`` (``amax``), the float mask ``x == m`` (a
comparison with a float output; a ``bool`` output is several times slower on the CPU),
``c + C * (x != m)`` per channel ``c``, and its minimum over the channels. Comparisons with the maximum are
exact, so ties resolve to the first channel as in ``argmax``, and ``-0.0 == 0.0`` as there.

On the CPU, :func:`first_argmax_keys` runs in row bands of about :data:`BAND_PIXELS` pixels, so a band's
intermediates stay in cache and the logits are read from memory once; other devices take the image in one
band.
"""

from __future__ import annotations

import torch

from .base import scratch

__all__ = ["BAND_PIXELS", "band_rows", "first_argmax_keys", "first_index_of"]

#: Pixels per row band on the CPU. At 1024x2048 with Cityscapes' 19 channels, 64K-128K pixels are fastest
#: (the band's logits and work buffers stay in cache); the larger end halves the number of parallel regions,
#: which matters when other processes compete for the cores.
BAND_PIXELS = 1 << 17


def band_rows(h: int, w: int, device: torch.device, pixels: int | None = None) -> int:
    """Rows per band for an ``(H, W)`` image: about ``pixels`` (default :data:`BAND_PIXELS`) pixels on the
    CPU, all ``H`` elsewhere."""
    if device.type != "cpu":
        return max(1, h)
    return max(1, min(h, (BAND_PIXELS if pixels is None else pixels) // max(1, w)))


def first_index_of(x: torch.Tensor, peak: torch.Tensor, work: torch.Tensor | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the first channel of ``x`` ``(K, ...)`` equal to ``peak`` ``(...)``, ``K`` where there is none.

    With ``peak = x.amax(0)`` this is ``x.argmax(0)`` (first maximum on ties); with the maximum over more
    channels than ``x`` (e.g. stuff and thing channels, ``x`` the stuff ones) it is the first maximum if it
    lies in ``x``, else ``K``. Exact for ``K <= 2**23`` (keys below ``2 * K`` in float32).

    Args:
        x: ``(K, ...)`` floating point, ``K >= 1``.
        peak: ``(...)``, broadcastable against ``x[0]``.
        work: Optional ``(K, ...)`` float32 buffer (overwritten).
        out: Optional ``(...)`` output; default a new float32 tensor (integral values).
    """
    k = int(x.shape[0])
    cand = torch.eq(x, peak, out=work) if work is not None else torch.eq(x, peak).float()  # 1.0 at a maximum
    base = torch.arange(k, 2 * k, dtype=cand.dtype, device=cand.device).view(k, *([1] * (cand.ndim - 1)))
    torch.sub(base, cand, alpha=k, out=cand)  # channel j -> j where it reaches the peak, j + k elsewhere
    if out is not None and out.dtype == cand.dtype:
        return torch.amin(cand, 0, out=out)
    low = torch.amin(cand, 0)
    return low if out is None else out.copy_(low)


@torch.no_grad()
def first_argmax_keys(logits: torch.Tensor, num_first: int, out: torch.Tensor,
                      samples: torch.Tensor | None = None, stride: int = 1) -> None:
    """Per pixel, the first maximum over all channels if it is one of the first ``num_first``, else ``num_first``.

    Equals ``torch.where(a < k, a, k)`` with ``a = logits.argmax(0)`` and ``k = num_first`` (first maximum on
    ties; a channel after ``k`` wins only if it is strictly larger than channels ``0 .. k - 1``), e.g. the
    stuff class of a pixel whose semantic argmax is a stuff channel, or ``num_stuff`` for "some thing class".
    One read of the logits (in row bands on the CPU).

    Args:
        logits: ``(C, H, W)`` finite floating-point logits, any strides.
        num_first: ``k`` in ``0 .. C``.
        out: ``(H, W)`` integer tensor (e.g. int32) on the same device, written in full.
        samples: Optional ``(C, ceil(H / stride), ceil(W / stride))`` tensor, filled with
            ``logits[:, ::stride, ::stride]`` while each band is in cache.
        stride: Sampling stride of ``samples``.
    """
    c, h, w = logits.shape
    k = int(num_first)
    if not 0 <= k <= c:
        raise ValueError(f"num_first must be in 0..{c}, got {k}.")
    dev = logits.device
    rows = band_rows(h, w, dev)
    if k:
        # work buffers, reused across calls on the CPU (fresh multi-megabyte buffers cost page faults)
        peak = scratch("reduce.peak", (rows, w), logits.dtype, dev)
        cand = scratch("reduce.cand", (k, rows, w), torch.float32, dev)
        key = scratch("reduce.key", (rows, w), torch.float32, dev)
    else:
        out.fill_(0)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        if k:
            band = logits[:, r0:r1]
            n = r1 - r0
            m = torch.amax(band, 0, out=peak[:n])
            out[r0:r1].copy_(first_index_of(band[:k], m, work=cand[:, :n], out=key[:n]))
        if samples is not None:
            first = -(-r0 // stride) * stride  # first sampled row in the band
            if first < r1:
                part = logits[:, first:r1:stride, ::stride]
                samples[:, first // stride:first // stride + part.shape[1]].copy_(part)
