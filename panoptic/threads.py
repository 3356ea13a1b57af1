"""How many CPU threads a command uses by default: the cores that are free now, not every core.

Torch's default (one thread per core) is fast on an idle machine and slow on a busy one: its OpenMP threads
spin at every barrier, and one thread descheduled by another process holds up all the others, so with two busy
processes on two cores two threads run several times slower than one. The commands therefore measure how much
of the CPU other processes are using (``/proc/stat`` over :data:`SAMPLE_S`; the 1-minute load average where
that file does not exist) and use the cores left free, at least one. ``--threads N`` or ``OMP_NUM_THREADS``
override the choice. The fusions' C pass sizes its pool from ``torch.get_num_threads()``, so it follows too.
``benchmarks/cli_threads.py`` measures the rule on a quiet and on a busy machine (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

#: How long :func:`busy_cores` watches the CPU counters.
SAMPLE_S = 0.1


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times(cpus: set[int] | None) -> tuple[int, int] | None:
    """``(busy, total)`` jiffies summed over ``cpus`` (all when ``None``) from ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cores(sample_s: float = SAMPLE_S) -> float | None:
    """How many of this process's cores other processes keep busy now (this one sleeps while it measures).

    Returns:
        Busy cores in ``[0, available cores]``: from ``/proc/stat`` over ``sample_s`` seconds, else the 1-minute
        load average; ``None`` when neither exists.
    """
    try:
        cpus: set[int] | None = os.sched_getaffinity(0)
    except AttributeError:
        cpus = None
    first = _cpu_times(cpus)
    if first is not None:
        time.sleep(sample_s)
        second = _cpu_times(cpus)
        if second is not None and second[1] > first[1]:
            n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
            return n * (second[0] - first[0]) / (second[1] - first[1])
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_threads() -> int:
    """The threads a command uses without ``--threads``: ``OMP_NUM_THREADS`` if set, else the free cores (>= 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = available_cores()
    busy = busy_cores()
    if busy is None:
        return cores
    # Round to the nearest core: a core half used by someone else is not worth a spinning thread.
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


@contextmanager
def applied_threads(threads: int | None) -> Iterator[int]:
    """Run a block with ``threads`` torch threads (``None``: :func:`default_threads`), restoring the count after.

    Yields:
        The thread count in effect.
    """
    before = torch.get_num_threads()
    n = int(threads) if threads else default_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    """Add the ``--threads N`` flag every command shares (``dest="threads"``, default ``None``: automatic)."""
    suffix = f" {what}" if what else ""
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help=f"CPU threads{suffix} (default: the cores other processes leave free now, at least 1; "
                             "OMP_NUM_THREADS also sets it)")
