"""What ``--resume`` checks: a resumed run continues the *same* run, or says exactly why it would not.

Resuming is bit-identical to an uninterrupted run only when everything that shapes the training trajectory is
unchanged: the config (learning rate, schedule, seed, batch size, data, model arguments, ...), the number of CPU
threads (different reduction orders give different weights) and the number of processes. :func:`check_resume`
compares the checkpoint's record with the new run and raises a :class:`~panoptic.engine.checkpoint.CheckpointError`
that lists every difference and the flag that accepts them (``--allow-config-change``, or
``allow_config_change=True`` in :func:`~panoptic.engine.trainer.train`). Fields that only change what is logged or
where it goes (``out_dir``, ``log_every``, ``eval_every``, ``checkpoint_every``, progress bars, ...) may differ;
``iterations`` may grow but not shrink below the checkpoint's.

Example:
    >>> config_differences({"seed": 0, "optim": {"lr": 0.02}, "out_dir": "a"},
    ...                    {"seed": 1, "optim": {"lr": 0.02}, "out_dir": "b"})
    [('seed', 0, 1)]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

ALLOW_FLAG = "--allow-config-change"

# Config keys (dotted) that do not change the weights a run reaches: where and how often it logs, evaluates and
# saves (evaluation runs with the RNG states saved and restored), and how the data is loaded. Also used by
# `panoptic compare`'s cache key.
NOT_WEIGHTS = frozenset({
    "out_dir", "progress", "tensorboard", "log_every", "eval_every", "eval_at_end", "checkpoint_every",
    "keep_checkpoints", "debug_rank_digest", "data.num_workers", "data.cache_dir", "data.max_eval_images",
    "dist.timeout_s",
    "threads",  # compared as the thread count the run actually used (the config may leave it to torch)
})


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key != "model_kwargs":  # builder kwargs compare as one value
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def weight_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a ``TrainConfig.to_dict()`` that determine the trained weights, by dotted key."""
    return {k: v for k, v in _flatten(config).items() if k not in NOT_WEIGHTS}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: frozenset[str] = frozenset({"iterations"})) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every weight-determining config field that differs.

    Args:
        saved: The checkpoint's config (``TrainConfig.to_dict()``).
        current: The new run's.
        ignore: Further keys to skip (default ``iterations``, which a resumed run may raise).
    """
    a, b = weight_config(saved), weight_config(current)
    keys = sorted((a.keys() | b.keys()) - ignore)
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def check_resume(path: str | Path, saved_config: Mapping[str, Any] | None, config: Mapping[str, Any], *,
                 checkpoint_iteration: int, saved_threads: int | None, threads: int, saved_world_size: int,
                 world_size: int, allow_config_change: bool = False) -> list[str]:
    """Refuse to resume a run under another config; returns the accepted differences (empty when identical).

    Args:
        path: The checkpoint (named in the message).
        saved_config: Its recorded config (``None`` for checkpoints written outside the engine: not compared).
        config: The new run's config as a dict.
        checkpoint_iteration: Iterations the checkpoint has completed.
        saved_threads: CPU threads of the run that wrote it (``None`` when not recorded).
        threads: CPU threads of this run.
        saved_world_size: Processes of the run that wrote it.
        world_size: Processes of this run.
        allow_config_change: Accept the differences (they are returned, e.g. to be logged).

    Raises:
        CheckpointError: If ``iterations`` is below the checkpoint's, or anything else differs and
            ``allow_config_change`` is not set.
    """
    target = int(config["iterations"])
    if target < checkpoint_iteration:
        raise CheckpointError(f"{path} has already completed {checkpoint_iteration} iterations, more than the "
                              f"--iterations {target} of this run, so nothing would be trained; pass --iterations "
                              f"{checkpoint_iteration} or more to continue it.")
    diffs = [f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in
             (config_differences(saved_config, config) if saved_config is not None else [])]
    if saved_threads is not None and saved_threads != threads:
        diffs.append(f"threads (torch CPU threads): {saved_threads} in the checkpoint, {threads} now")
    if saved_world_size != world_size:
        diffs.append(f"processes (world size): {saved_world_size} in the checkpoint, {world_size} now")
    if diffs and not allow_config_change:
        raise CheckpointError(f"{path} was trained with another configuration, so resuming would not continue the "
                              f"same run: {'; '.join(diffs)}. Rerun with the checkpoint's values, or pass "
                              f"{ALLOW_FLAG} to resume with the new ones (the weights then differ from an "
                              "uninterrupted run), or start a new run without --resume.")
    return diffs
