"""Process groups, devices and small collectives for ``torchrun`` launches.

Single machine, N processes (CPU: gloo; CUDA: nccl, one GPU per process)::

    torchrun --standalone --nproc_per_node N -m panoptic train --config run.json

Several machines (run the same command on each; ``--node_rank`` 0..M-1, the rendezvous host reachable by all)::

    torchrun --nnodes M --nproc_per_node N --node_rank K --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 --rdzv_id RUN_NAME -m panoptic train --config run.json

``--batch-size`` is per process, so the global batch is ``N * M * batch_size``; scale ``lr`` with it. The data
folder (and ``--out``) must be visible at the same path on every machine; only rank 0 writes logs and
checkpoints.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
        device: This process's device.
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
        owns_group: Whether :func:`init_distributed` created the process group (and should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable)
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if this process created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` -> ``cuda:<local_rank>``.

    Raises:
        ValueError: If CUDA is requested but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu.")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    Without those variables (or with ``WORLD_SIZE=1``) nothing is initialized. An already initialized
    group is reused.

    Args:
        device: See :func:`resolve_device`.
        backend: ``"auto"``: nccl for CUDA devices, gloo for CPU.
        timeout_s: Collective timeout.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(), False)
    if world <= 1:
        return DistInfo(device=dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, True)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when not distributed)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensors: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Sum CPU tensors over processes (returns new CPU tensors; unchanged when not distributed)."""
    if not info.distributed:
        return tensors
    out = {}
    comm = info.device if info.backend == "nccl" else torch.device("cpu")
    for k, v in tensors.items():
        t = v.detach().to(comm).clone()
        dist.all_reduce(t)
        out[k] = t.cpu()
    return out


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
