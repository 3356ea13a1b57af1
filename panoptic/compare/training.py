"""Train the compared networks, or reuse cached checkpoints whose training config matches.

A checkpoint is cached under ``<cache>/<network>-<key>/model_final.pt`` where ``key`` hashes everything that
changes the weights: the full :class:`~panoptic.engine.config.TrainConfig` (minus logging and output fields), the
panoptic version and, for user data, the annotation files' size and modification time. An interrupted training
resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..engine.config import TrainConfig
from ..engine.trainer import FINAL_NAME, LAST_FILE, train

__all__ = ["TrainedNetwork", "cache_key", "default_cache_dir", "train_or_reuse"]

# TrainConfig fields that do not change the trained weights.
_NOT_IN_KEY = ("out_dir", "progress", "tensorboard", "log_every", "eval_every", "eval_at_end", "checkpoint_every",
               "keep_checkpoints", "threads", "debug_rank_digest")


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


def _file_stamp(path: str | None) -> list[Any] | None:
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        return [str(p), None]
    st = p.stat()
    return [str(p.resolve()), st.st_size, int(st.st_mtime)]


def cache_key(config: TrainConfig) -> str:
    """16 hex digits identifying the weights ``config`` trains (see the module docstring)."""
    d = config.to_dict()
    for k in _NOT_IN_KEY:
        d.pop(k, None)
    d["data"].pop("cache_dir", None)
    d["data"].pop("num_workers", None)
    data = config.data
    stamps = {}
    if data.root is not None:
        for name in ("panoptic_train.json", "annotations/panoptic_train2017.json"):
            stamps[name] = _file_stamp(str(Path(data.root) / name))
    stamps["train_json"] = _file_stamp(data.train_json)
    stamps["categories"] = _file_stamp(getattr(data, "categories", None))
    blob = json.dumps({"config": d, "files": stamps, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_or_reuse(network: str, config: TrainConfig, cache_dir: Path, retrain: bool = False) -> TrainedNetwork:
    """Return the cached checkpoint of ``config`` or train it (resuming an interrupted run).

    Args:
        network: Network id, used in the folder name.
        config: Its training config; ``out_dir`` is replaced by the cache folder.
        cache_dir: Cache root.
        retrain: Ignore a cached final checkpoint and train from scratch.
    """
    run_dir = cache_dir / f"{network}-{cache_key(config)}"
    final = run_dir / FINAL_NAME
    if final.is_file() and not retrain:
        return TrainedNetwork(network, final, True, 0.0, 0.0)
    config = TrainConfig.from_dict({**config.to_dict(), "out_dir": str(run_dir)})
    resume = (run_dir / LAST_FILE).is_file() and not retrain
    result = train(config, resume=resume or None)
    return TrainedNetwork(network, result.checkpoint, False, result.seconds, result.images_per_second)
