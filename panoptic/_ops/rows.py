"""Running a C pass over the rows of an image on several threads (the driver of the native kernels)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

__all__ = ["as_native", "row_bands", "run_rows", "run_threads"]

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _reset_pool() -> None:
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)  # a forked child has the executor but not its threads


def as_native(x: torch.Tensor, ndim: int | None = None) -> np.ndarray | None:
    """A numpy view of a contiguous float32 CPU tensor (of ``ndim`` dimensions if given), else ``None``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return None
    if ndim is not None and x.ndim != ndim:
        return None
    return x.detach().numpy()


#: Pixels per band of :func:`row_bands` on the CPU: a band's channels and temporaries stay in the caches.
BAND_PIXELS = 1 << 17


def row_bands(x: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open row ranges ``(r0, r1)`` covering the ``H`` rows of ``x`` ``(..., H, W)``, for a torch pass that
    runs band by band.

    On the CPU a full-image pass allocates fresh megabytes for every temporary (paid in page faults) and
    streams each one through memory; bands of :data:`BAND_PIXELS` pixels keep them in the caches (about 2x
    at 1024x2048). Other devices get one band: they gain nothing from it and pay a launch per operation.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rows = h if x.device.type != "cpu" else max(1, BAND_PIXELS // max(w, 1))
    return [(r0, min(r0 + rows, h)) for r0 in range(0, h, rows)] or [(0, 0)]


def run_rows(fn: Callable[[int, int, np.ndarray | None, int], bool], h: int) -> bool:
    """Run a C pass over ``h`` rows on ``torch.get_num_threads()`` threads, the calling thread included.

    ``fn(row0, row1, counter, chunk)`` calls the pass (which releases the GIL). With more than one thread,
    every thread gets the whole range and a shared int64 ``counter``: the pass takes chunks of ``chunk``
    rows from it with an atomic add until none is left, so a thread slowed down by another process simply
    takes fewer chunks, and no thread waits for another.

    Returns:
        ``True`` if every call returned ``True`` (every logit it read was finite).
    """
    threads = max(1, min(torch.get_num_threads(), h // 8))  # a few rows per thread at least
    if threads == 1:
        return bool(fn(0, h, None, 0))
    counter = np.zeros(1, dtype=np.int64)
    chunk = max(4, -(-h // (16 * threads)))
    return all(run_threads(lambda: fn(0, h, counter, chunk), threads))


def run_threads(fn: Callable[[], Any], threads: int) -> list[Any]:
    """Call ``fn()`` on ``threads`` threads at once, the calling thread included (the others from a pool kept
    for the next call), and return the results. ``fn`` shares its work out itself (a counter, an iterator)."""
    global _POOL, _POOL_SIZE
    if threads <= 1:
        return [fn()]
    with _POOL_LOCK:  # fusions may be called from several threads at once
        if _POOL is None or _POOL_SIZE != threads - 1:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(threads - 1, thread_name_prefix="panoptic-fusion"), threads - 1
        pool = _POOL
    futures = [pool.submit(fn) for _ in range(threads - 1)]
    mine = fn()
    return [*[f.result() for f in futures], mine]
