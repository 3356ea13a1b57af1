"""How many threads the fusions use for one call: never more than the work and the free cores repay.

With other processes on the cores, torch's OpenMP workers (which spin at every barrier) and our row-chunk pool
wait for descheduled threads, and many short parallel passes get several times *slower* than one thread. So a
fusion call runs with one thread on small images (below :data:`PARALLEL_PIXELS`, where a pass is too short to
repay a second thread) and, on large ones, with the cores other processes left free during the previous interval
(read from ``/proc/stat`` without waiting: the CPU counters since the last call, less this process's own CPU
time), at most the caller's ``torch.get_num_threads()``. The count is restored after the call.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..threads import _cpu_times, available_cores

__all__ = ["PARALLEL_PIXELS", "call_pixels", "free_cores", "fusion_threads"]

#: Images with fewer pixels run single-threaded (256 x 512 and smaller; measured, see ``docs/benchmarks.md``).
PARALLEL_PIXELS = 1 << 19

#: Counters younger than this are not re-read: the previous estimate stands.
_MIN_INTERVAL_S = 0.05

#: How many fusion calls ran with each thread count (outermost calls on the CPU), for the benchmarks: a reader
#: snapshots it around a call to see what the rule chose.
CHOSEN: Counter[int] = Counter()

_LOCK = threading.Lock()
_state: dict[str, float | int | None] = {"depth": 0, "before": None, "t": None, "busy": None, "total": None,
                                         "own": None, "free": None}


def free_cores() -> int | None:
    """Cores other processes left free since the previous call (``None`` on the first call or without
    ``/proc/stat``). Non-blocking: it compares the CPU counters with those read at the previous call."""
    try:
        cpus: set[int] | None = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        cpus = None
    now, own = time.monotonic(), time.process_time()
    with _LOCK:
        last_t = _state["t"]
        if last_t is not None and now - last_t < _MIN_INTERVAL_S:
            return _state["free"]  # type: ignore[return-value]
        counters = _cpu_times(cpus)
        if counters is None:
            return None
        busy, total = counters
        free = None
        if last_t is not None and total > _state["total"]:  # type: ignore[operator]
            cores = available_cores()
            n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
            busy_all = n * (busy - _state["busy"]) / (total - _state["total"])  # type: ignore[operator]
            mine = (own - _state["own"]) / max(now - last_t, 1e-6)  # type: ignore[operator]
            free = max(1, min(cores, math.floor(cores - max(0.0, busy_all - mine) + 0.5)))
        _state.update(t=now, busy=busy, total=total, own=own, free=free)
        return free


def call_pixels(x: object, output_size: object = None) -> int:
    """``H * W`` of a fusion call's output, from ``output_size`` or the last two dimensions of its input ``x``, for
    :func:`fusion_threads`, which is entered before the input checks (they are passes over the inputs too); 0 for
    inputs the checks will refuse."""
    try:
        if output_size is not None:
            return int(output_size[0]) * int(output_size[1])  # type: ignore[index]
        return int(x.shape[-2]) * int(x.shape[-1])  # type: ignore[attr-defined]
    except (TypeError, IndexError, AttributeError, ValueError):
        return 0


@contextmanager
def fusion_threads(pixels: int, device: torch.device) -> Iterator[int]:
    """Run one fusion call with the threads its image size and the free cores repay (CPU only), then restore.

    Nested and concurrent calls share one setting: the first to enter chooses and saves the caller's count, the
    last to leave restores it.

    Args:
        pixels: ``H * W`` of the image.
        device: The logits' device (other devices are left alone).

    Yields:
        The torch thread count in effect.
    """
    if device.type != "cpu":
        yield torch.get_num_threads()
        return
    with _LOCK:
        depth = int(_state["depth"])  # type: ignore[arg-type]
        _state["depth"] = depth + 1
        if depth == 0:
            _state["before"] = torch.get_num_threads()
        before = int(_state["before"])  # type: ignore[arg-type]
    try:
        if depth == 0:
            n = 1
            if pixels >= PARALLEL_PIXELS and before > 1:
                free = free_cores()
                n = before if free is None else min(before, free)
            if n != before:
                torch.set_num_threads(n)
            with _LOCK:
                CHOSEN[n] += 1
        yield torch.get_num_threads()
    finally:
        with _LOCK:
            _state["depth"] = int(_state["depth"]) - 1  # type: ignore[arg-type]
            if _state["depth"] == 0 and torch.get_num_threads() != before:
                torch.set_num_threads(before)
