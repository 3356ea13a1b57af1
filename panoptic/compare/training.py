"""Train the compared networks, or reuse cached checkpoints trained from the same inputs.

A checkpoint is cached under ``<cache>/<network>-<key>/model_final.pt`` where ``key`` hashes everything that
determines the weights: the :class:`~panoptic.engine.config.TrainConfig` (minus logging and output fields, see
:data:`~panoptic.engine.resume.NOT_WEIGHTS`), the content of every training file (JSON, images, PNGs; see
:mod:`panoptic.compare.fingerprint`), the code (version + source hash), the torch version, the device type and the
number of CPU threads (different thread counts give different weights). An interrupted training resumes from its
last periodic checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.config import TrainConfig
from ..engine.resume import weight_config
from ..engine.trainer import FINAL_NAME, LAST_FILE, train
from .fingerprint import FileHashes, code_fingerprint, data_fingerprint

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

HASHES_FILE = "file-hashes.json"


@dataclass
class TrainedNetwork:
    """A trained network's checkpoint.

    Attributes:
        network: Network id (``"upsnet"``, ``"upsnet_c"``, ``"mrcnn_psp"``).
        checkpoint: Path of ``model_final.pt``.
        reused: ``True`` when it came from the cache.
        seconds: Training wall time of this call (0 when reused).
        images_per_second: Training throughput (0 when reused).
    """

    network: str
    checkpoint: Path
    reused: bool
    seconds: float
    images_per_second: float


def default_cache_dir() -> Path:
    """``$PANOPTIC_CACHE/compare``, else ``~/.cache/panoptic/compare``."""
    env = os.environ.get("PANOPTIC_CACHE")
    return Path(env) / "compare" if env else Path.home() / ".cache" / "panoptic" / "compare"


def cache_key(config: TrainConfig, data_files: Sequence[Path], hashes: FileHashes, *, threads: int,
              device: str) -> str:
    """16 hex digits identifying the weights ``config`` trains (see the module docstring).

    Args:
        config: The training config.
        data_files: Every file training reads, in the dataset's order (JSON, categories, images, PNGs).
        hashes: The file-hash cache.
        threads: The CPU threads training runs with.
        device: The device type (``"cpu"``, ``"cuda"``).
    """
    blob = json.dumps({"config": weight_config(config.to_dict()), "data": data_fingerprint(data_files, hashes),
                       "code": code_fingerprint(), "torch": torch.__version__, "threads": threads,
                       "device": device}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_or_reuse(network: str, config: TrainConfig, cache_dir: Path, retrain: bool = False, *,
                   data_files: Sequence[Path], device: str = "cpu") -> TrainedNetwork:
    """Return the cached checkpoint of ``config`` or train it (resuming an interrupted run).

    Args:
        network: Network id, used in the folder name.
        config: Its training config; ``out_dir`` is replaced by the cache folder.
        cache_dir: Cache root.
        retrain: Ignore a cached final checkpoint and train from scratch.
        data_files: Every file training reads (see :func:`cache_key`).
        device: The device type training runs on.
    """
    hashes = FileHashes(cache_dir / HASHES_FILE)
    key = cache_key(config, data_files, hashes, threads=config.threads or torch.get_num_threads(), device=device)
    hashes.save()
    run_dir = cache_dir / f"{network}-{key}"
    final = run_dir / FINAL_NAME
    if final.is_file() and not retrain:
        return TrainedNetwork(network, final, True, 0.0, 0.0)
    config = TrainConfig.from_dict({**config.to_dict(), "out_dir": str(run_dir)})
    resume = (run_dir / LAST_FILE).is_file() and not retrain
    result = train(config, resume=resume or None)
    return TrainedNetwork(network, result.checkpoint, False, result.seconds, result.images_per_second)


def train_in_parallel(tasks: Sequence[tuple[str, TrainConfig]], cache_dir: Path, retrain: bool, *,
                      data_files: Sequence[Path], jobs: int,
                      on_done: Callable[[int, TrainedNetwork], None] | None = None) -> list[TrainedNetwork]:
    """:func:`train_or_reuse` for every ``(network, config)`` task, ``jobs`` at once in worker processes (CPU).

    Each task is cached as soon as it finishes, so a failure loses only the trainings still running (which
    resume from their last checkpoint on the next run). Tasks start in the given order.

    Args:
        tasks: ``(network id, training config)`` pairs; each config sets its own ``threads``.
        cache_dir: Cache root.
        retrain: Ignore cached final checkpoints.
        data_files: Every file training reads.
        jobs: Worker processes.
        on_done: Called with ``(task index, result)`` as each task finishes.

    Returns:
        The results, in task order.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: list[TrainedNetwork | None] = [None] * len(tasks)
    # spawn: a forked child would inherit torch's thread pools and locks of the parent
    pool = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(tasks))),
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(train_or_reuse, net, cfg, cache_dir, retrain, data_files=list(data_files),
                               device="cpu"): i for i, (net, cfg) in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                results[futures[f]] = tn = f.result()  # raises the worker's error
                if on_done is not None:
                    on_done(futures[f], tn)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # let running trainings finish (and be cached)
    return [r for r in results if r is not None]
