"""Fast per-pixel reductions over the channel dimension of ``(C, H, W)`` logits, shared by the fusions.

``torch.argmax(x, 0)`` (and ``torch.max(x, 0)``) over the channels of a ``(C, H, W)`` CPU tensor is not
vectorised and costs several times a pass of ``amax``. The same first-maximum index comes from vectorised
operations only (:func:`first_index_of`): the maximum ``m`` (``amax``), the float mask ``x == m`` (a
comparison with a float output; a ``bool`` output is several times slower on the CPU), and then, for up to
:data:`MASK_CHANNELS` channels, one matrix-vector product that sums ``2**-c`` over the channels ``c`` reaching
the maximum: the float exponent of that sum is the first such channel, read with two integer operations.
The sum of distinct powers of two is exact in float32 (in any order), and comparisons with the maximum are
exact, so ties resolve to the first channel as in ``argmax``, and ``-0.0 == 0.0`` as there. More channels
take ``c + C * (x != m)`` per channel and its minimum over the channels.

On the CPU, :func:`first_argmax_keys` runs in row bands of about :data:`BAND_PIXELS` pixels, so a band's
intermediates stay in cache and the logits are read from memory once; other devices take the image in one
band.

**Native passes.** When the optional C extension ``panoptic.fusion._kernels`` is built (see ``setup.py``),
contiguous float32 CPU logits take one C pass instead (:func:`native_logits`, :func:`run_rows`): per block of
rows it streams every channel once, keeps the running maxima and first indices in cache and decides each
pixel, on ``torch.get_num_threads()`` threads (row ranges, the GIL released). Its results equal the torch
path's (same comparisons, first maximum on ties), which the tests check; other devices, dtypes and layouts
take the torch path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .base import FiniteCheck, scratch

try:
    from . import _kernels
except ImportError:  # pragma: no cover - the extension is optional (no C compiler at install time)
    _kernels = None

__all__ = ["BAND_PIXELS", "MASK_CHANNELS", "band_rows", "first_argmax_keys", "first_index_of", "native_logits",
           "native_masks", "run_rows", "sample_rows"]

#: Pixels per row band on the CPU. At 1024x2048 with Cityscapes' 19 channels, 64K-128K pixels are fastest
#: (the band's logits and work buffers stay in cache); the larger end halves the number of parallel regions,
#: which matters when other processes compete for the cores.
BAND_PIXELS = 1 << 17

#: Most channels :func:`first_index_of` handles with the power-of-two mask: ``2**0 .. 2**-K`` (the last term
#: stands for "none") must fit in float32's 24-bit significand.
MASK_CHANNELS = 23

# XOR with this flips the low 30 bits of a float32 in [2**-23, 2): its 7 low exponent bits ``127 - c`` become
# ``c`` (bit 30, the exponent's top bit, is 0 below 2); a right shift by 23 then drops the significand.
_EXPONENT_FLIP = (1 << 30) - 1


def native_logits(logits: torch.Tensor) -> np.ndarray | None:
    """A numpy view of ``(C, H, W)`` logits for the C passes, or ``None`` if they must take the torch path
    (extension not built, not a contiguous float32 CPU tensor)."""
    if _kernels is None or logits.device.type != "cpu" or logits.dtype != torch.float32:
        return None
    if not logits.is_contiguous() or logits.ndim != 3:
        return None
    return logits.detach().numpy()


def native_masks(masks: list[torch.Tensor]) -> list[np.ndarray] | None:
    """Box-local mask logits as contiguous float32 numpy arrays for the C passes, or ``None`` if they must
    take the torch path (extension not built, a mask not float32)."""
    if _kernels is None or any(m.dtype != torch.float32 for m in masks):
        return None
    return [m.detach().contiguous().numpy() if m.numel() else _NO_MASK for m in masks]


_NO_MASK = np.zeros(0, dtype=np.float32)
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _reset_pool() -> None:
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)  # a forked child has the executor but not its threads


def run_rows(fn: Callable[[int, int, np.ndarray | None, int], bool], h: int) -> bool:
    """Run a C pass over ``h`` rows on ``torch.get_num_threads()`` threads, the calling thread included.

    ``fn(row0, row1, counter, chunk)`` calls the pass (which releases the GIL). With more than one thread,
    every thread gets the whole range and a shared int64 ``counter``: the pass takes chunks of ``chunk``
    rows from it with an atomic add until none is left, so a thread slowed down by another process (or by
    torch's OpenMP workers, which spin for a few ms after each parallel operation) simply takes fewer
    chunks, and no thread waits for the GIL in between.

    Returns:
        ``True`` if every call returned ``True`` (every logit it read was finite).
    """
    global _POOL, _POOL_SIZE
    threads = max(1, min(torch.get_num_threads(), h // 8))  # a few rows per thread at least
    if threads == 1:
        return bool(fn(0, h, None, 0))
    with _POOL_LOCK:  # fusions may be called from several threads at once
        if _POOL is None or _POOL_SIZE != threads - 1:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(threads - 1, thread_name_prefix="panoptic-fusion"), threads - 1
        pool = _POOL
    counter = np.zeros(1, dtype=np.int64)
    chunk = max(4, -(-h // (16 * threads)))
    futures = [pool.submit(fn, 0, h, counter, chunk) for _ in range(threads - 1)]
    ok = bool(fn(0, h, counter, chunk))
    return all([bool(f.result()) for f in futures]) and ok


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
    lies in ``x``, else ``K``. Exact for ``K <= 2**23``.

    Args:
        x: ``(K, ...)`` finite floating point, ``K >= 1``.
        peak: ``(...)``, broadcastable against ``x[0]``.
        work: Optional float32 buffer of ``x``'s shape (overwritten); its trailing dimensions must flatten
            to one (e.g. a slice of a contiguous buffer along its second dimension).
        out: Optional ``(...)`` output (integer or floating point), written in full.

    Returns:
        ``out``, or a new int32 tensor when it is ``None``.
    """
    k = int(x.shape[0])
    cand = torch.eq(x, peak, out=work) if work is not None else torch.eq(x, peak).float()  # 1.0 at a maximum
    shape = cand.shape[1:]
    if k <= MASK_CHANNELS and cand.dtype == torch.float32:
        flat = cand.reshape(k, -1)  # a view for `work` as documented (the product reads it in place)
        weight, none = _mask_terms(k, cand.device)
        total = torch.addmv(none, flat.t(), weight)  # sum of 2**-c over the maximal channels, + 2**-K
        bits = total.view(torch.int32)
        if out is not None and out.dtype == torch.int32 and out.is_contiguous():
            key = torch.bitwise_xor(bits, _EXPONENT_FLIP, out=out.view(-1))
            key.bitwise_right_shift_(23)
            return out
        key = torch.bitwise_xor(bits, _EXPONENT_FLIP).bitwise_right_shift_(23).view(shape)
        return key if out is None else out.copy_(key)
    base = torch.arange(k, 2 * k, dtype=cand.dtype, device=cand.device).view(k, *([1] * (cand.ndim - 1)))
    torch.sub(base, cand, alpha=k, out=cand)  # channel j -> j where it reaches the peak, j + k elsewhere
    low = torch.amin(cand, 0)
    return low.to(torch.int32) if out is None else out.copy_(low)


def _mask_terms(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2**-c for c < k)`` and ``[2**-k]`` as float32 on ``device`` (cached)."""
    key = (k, str(device))
    terms = _MASK_TERMS.get(key)
    if terms is None:
        p = torch.pow(2.0, -torch.arange(k + 1, dtype=torch.float64)).float().to(device)
        terms = _MASK_TERMS[key] = (p[:k].contiguous(), p[k:].contiguous())
    return terms


_MASK_TERMS: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


@torch.no_grad()
def first_argmax_keys(logits: torch.Tensor, num_first: int, out: torch.Tensor,
                      samples: torch.Tensor | None = None, stride: int = 1,
                      finite: FiniteCheck | None = None) -> None:
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
            ``logits[:, ::stride, ::stride]`` while each band is in cache (:func:`sample_rows`).
        stride: Sampling stride of ``samples``.
        finite: Optional check that every band is handed to, right after it is read (the caller then calls
            its :meth:`~panoptic.fusion.base.FiniteCheck.raise_if_not_finite`).
    """
    c, h, w = logits.shape
    k = int(num_first)
    if not 0 <= k <= c:
        raise ValueError(f"num_first must be in 0..{c}, got {k}.")
    dev = logits.device
    src = native_logits(logits)
    native_samples = samples is None or (samples.dtype == torch.float32 and samples.is_contiguous()
                                         and samples.device.type == "cpu")
    if src is not None and out.dtype == torch.int32 and out.is_contiguous() and native_samples:
        dst = out.numpy()
        smp = None if samples is None else samples.numpy()  # filled by the pass
        ok = run_rows(lambda r0, r1, cnt, ch: _kernels.first_argmax_keys(src, dst, c, h, w, k, r0, r1, smp, stride,
                                                                          cnt, ch), h)
        if finite is not None:
            finite.add_flag(ok)
        return
    rows = band_rows(h, w, dev)
    if k:
        # work buffers, reused across calls on the CPU (fresh multi-megabyte buffers cost page faults)
        peak = scratch("reduce.peak", (rows, w), logits.dtype, dev)
        cand = scratch("reduce.cand", (k, rows, w), torch.float32, dev)
    else:
        out.fill_(0)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        if k:
            band = logits[:, r0:r1]
            n = r1 - r0
            m = torch.amax(band, 0, out=peak[:n])
        if finite is not None:  # right after the band was read, before the mask evicts it from cache
            finite.add(logits[:, r0:r1])
        if samples is not None:
            sample_rows(logits, r0, r1, samples, stride)
        if k:
            first_index_of(band[:k], m, work=cand[:, :n], out=out[r0:r1])


def sample_rows(logits: torch.Tensor, r0: int, r1: int, samples: torch.Tensor, stride: int) -> None:
    """Copy the grid samples ``logits[:, ::stride, ::stride]`` of rows ``r0 .. r1 - 1`` into ``samples``.

    Args:
        logits: ``(K, H, W)`` (e.g. a channel range of the logits).
        r0: First row of the band.
        r1: End of the band (exclusive).
        samples: ``(K, ceil(H / stride), ceil(W / stride))``, the matching channels of the sample buffer.
        stride: Grid stride.
    """
    first = -(-r0 // stride) * stride  # first grid row in the band
    if first < r1:
        part = logits[:, first:r1:stride, ::stride]
        samples[:, first // stride:first // stride + part.shape[1]].copy_(part)
