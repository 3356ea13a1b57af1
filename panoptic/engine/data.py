"""Training data for the engine: dataset folders, the cached synthetic benchmark, a resumable distributed sampler.

:class:`IterationBatchSampler` makes the batch of iteration ``i`` a pure function of ``(seed, rank, world_size, i)``:
each epoch is a seeded permutation, padded and sharded across ranks like ``DistributedSampler``, and the
rank's shards of consecutive epochs are read as one stream. Resuming at iteration ``k`` therefore sees exactly
the batches an uninterrupted run would, and augmentation (seeded per ``(seed, epoch, index)`` by
:class:`~panoptic.data.CocoPanopticDataset`) follows.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..atomic import atomic_write_text, fsync_dir
from ..categories import CategoryTable
from ..constants import SIZE_DIVISOR
from ..data import (
    CocoPanopticDataset,
    PanopticDataError,
    build_transforms,
    collate,
    write_synthetic_dataset,
)
from ..data.synthetic import SCENE_PRESETS
from ..data.targets import PanopticTarget
from .config import DataConfig
from .distributed import DistInfo, barrier

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []

@dataclass(frozen=True)
class SplitPaths:
    """The three paths of a COCO-panoptic split.

    Attributes:
        image_root: Folder of the RGB images.
        json: The COCO-panoptic JSON.
        panoptic_root: Folder of the id PNGs.
    """

    image_root: Path
    json: Path
    panoptic_root: Path


# ------------------------------------------------------------------------------------ synthetic data
def _cache_base(config: DataConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    env = os.environ.get("PANOPTIC_CACHE")
    return Path(env) / "synthetic" if env else Path.home() / ".cache" / "panoptic" / "synthetic"


def synthetic_benchmark(config: DataConfig, info: DistInfo | None = None,
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """The synthetic benchmark's folder, written on first use (by local rank 0; other ranks wait) and reused.

    The folder name encodes ``synthetic_n``, ``synthetic_size``, ``synthetic_seed`` and the val fraction, and
    holds a ``DONE`` marker once complete (it is written under a temporary name and renamed). ``progress(done,
    n)`` is called after each generated scene.
    """
    info = info or DistInfo()
    frac = config.synthetic_val_fraction
    name = f"n{config.synthetic_n}_s{config.synthetic_size}_seed{config.synthetic_seed}_val{frac:g}"
    if config.synthetic_scenes != "plain":  # plain keeps its old folder name (existing caches stay valid)
        name += f"_{config.synthetic_scenes}"
    root = _cache_base(config) / name
    if not (root / "DONE").is_file() and info.local_rank == 0:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.with_name(f".{name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        splits = {"train": 1.0 - frac, "val": frac} if frac > 0 else {"train": 1.0}
        try:
            write_synthetic_dataset(tmp, config.synthetic_n, config.synthetic_size, config.synthetic_seed, splits,
                                    config=SCENE_PRESETS[config.synthetic_scenes], progress=progress)
            atomic_write_text(tmp / "DONE", "ok\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written benchmark left behind
            raise
        if root.exists() and not (root / "DONE").is_file():
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
            fsync_dir(root.parent)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    barrier(info)
    return root


# --------------------------------------------------------------------------------------- folders
def _layout(root: Path) -> tuple[SplitPaths | None, SplitPaths | None]:
    """(train, val) found in a synthetic-layout or COCO-2017-layout folder."""
    if (root / "panoptic_train.json").is_file():
        val = root / "panoptic_val.json"
        return (SplitPaths(root / "images", root / "panoptic_train.json", root / "panoptic"),
                SplitPaths(root / "images", val, root / "panoptic") if val.is_file() else None)
    ann = root / "annotations"
    if (ann / "panoptic_train2017.json").is_file():
        val = ann / "panoptic_val2017.json"
        return (SplitPaths(root / "train2017", ann / "panoptic_train2017.json", ann / "panoptic_train2017"),
                SplitPaths(root / "val2017", val, ann / "panoptic_val2017") if val.is_file() else None)
    return None, None


def _explicit(json_path: str, image_root: str | None, panoptic_root: str | None, what: str) -> SplitPaths:
    j = Path(json_path)
    pan = Path(panoptic_root) if panoptic_root else (j.with_suffix("") if j.with_suffix("").is_dir()
                                                      else j.parent / "panoptic")
    img = Path(image_root) if image_root else j.parent / "images"
    if not img.is_dir():
        raise PanopticDataError(f"cannot find the images of {what} {j} (looked in {img}); pass --image-root.")
    return SplitPaths(img, j, pan)


def resolve_splits(config: DataConfig, info: DistInfo | None = None) -> tuple[SplitPaths, SplitPaths | None]:
    """Train and (optional) validation paths: explicit JSONs, else ``root``'s layout, else the synthetic benchmark.

    Raises:
        PanopticDataError: If ``root`` is missing or has neither known layout, or an explicit JSON's folders
            cannot be found.
    """
    train = val = None
    if config.root is not None:
        root = Path(config.root)
        if not root.is_dir():
            raise PanopticDataError(f"data folder {root} does not exist; pass a COCO-panoptic folder (e.g. one "
                                    "written by `panoptic synth`), or leave --data out for the synthetic benchmark.")
        train, val = _layout(root)
        if train is None and config.train_json is None:
            raise PanopticDataError(f"no COCO-panoptic data found in {root}: expected panoptic_train.json (+ images/, "
                             "panoptic/; what `panoptic synth` writes) or annotations/panoptic_train2017.json (+ "
                             "train2017/, annotations/panoptic_train2017/). Pass --train-json and friends for "
                             "other layouts.")
    elif config.train_json is None:
        train, val = _layout(synthetic_benchmark(config, info))
    if config.train_json is not None:
        train = _explicit(config.train_json, config.image_root, config.panoptic_root, "the training JSON")
    if config.val_json == "":
        val = None
    elif config.val_json is not None:
        val = _explicit(config.val_json, config.val_image_root or config.image_root,
                        config.val_panoptic_root or config.panoptic_root, "the validation JSON")
    assert train is not None
    return train, val


def build_datasets(config: DataConfig, seed: int = 0, info: DistInfo | None = None
                   ) -> tuple[CocoPanopticDataset, CocoPanopticDataset | None]:
    """Training dataset (resize/flip per ``config``) and validation dataset (test resize, no flip).

    Raises:
        PanopticDataError: If the splits disagree on the category table, the categories file is unreadable (or
            see :func:`resolve_splits`).
    """
    train_p, val_p = resolve_splits(config, info)
    try:
        table = CategoryTable.from_json(config.categories) if config.categories else None
    except ValueError as e:  # a user's file: one line, not a traceback
        raise PanopticDataError(str(e)) from None
    train = CocoPanopticDataset(train_p.image_root, train_p.json, train_p.panoptic_root, seed=seed, table=table,
                                transforms=build_transforms(config.short_side, config.max_size, config.flip_prob,
                                                            size_divisor=None))
    if val_p is None:
        return train, None
    val = CocoPanopticDataset(val_p.image_root, val_p.json, val_p.panoptic_root, table=table,
                              transforms=build_transforms(config.test_short_side, config.test_max_size, 0.0, None))
    if val.table != train.table:
        raise PanopticDataError(f"the validation categories ({val_p.json}) differ from the training ones "
                                f"({train_p.json}); "
                         "both splits need the same 'categories' list.")
    return train, val


# --------------------------------------------------------------------------------------- sampling
class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields the ``(epoch, index)`` batches of iterations ``start .. end - 1`` for one rank.

    Args:
        num_items: Dataset size.
        batch_size: Items per batch (per rank).
        seed: Permutation seed (epoch ``e`` uses ``numpy.random.default_rng([seed, e])``).
        rank: This rank.
        world_size: Number of ranks (each epoch is padded by repetition to a multiple of it).
        start: First iteration.
        end: One past the last iteration.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, end: int = 0) -> None:
        if num_items < 1:
            raise ValueError("the training dataset is empty.")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start, self.end = rank, world_size, start, end
        self.per_rank = -(-num_items // world_size)
        self._cache: dict[int, np.ndarray] = {}

    def _shard(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            total = self.per_rank * self.world_size
            perm = np.concatenate([perm, perm[: total - self.num_items]]) if total > self.num_items else perm
            self._cache = {epoch: perm[self.rank::self.world_size]}
        return self._cache[epoch]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` pairs of one iteration."""
        out = []
        for p in range(iteration * self.batch_size, (iteration + 1) * self.batch_size):
            epoch, offset = divmod(p, self.per_rank)
            out.append((epoch, int(self._shard(epoch)[offset])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i in range(self.start, self.end):
            yield self.batch(i)

    def __len__(self) -> int:
        return max(self.end - self.start, 0)


class _EpochItems(Dataset):
    """``dataset[(epoch, index)]`` with the augmentation randomness of that epoch."""

    def __init__(self, dataset: CocoPanopticDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, PanopticTarget]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _Indexed(Dataset):
    def __init__(self, dataset: CocoPanopticDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, PanopticTarget, int]:
        image, target = self.dataset[self.indices[k]]
        return image, target, self.indices[k]


def _collate_indexed(batch: list[tuple[torch.Tensor, PanopticTarget, int]]
                     ) -> tuple[torch.Tensor, list[PanopticTarget], list[int]]:
    images, targets = collate([(b[0], b[1]) for b in batch], size_divisor=SIZE_DIVISOR)
    return images, targets, [b[2] for b in batch]


def _loader_kwargs(num_workers: int, device: torch.device) -> dict[str, Any]:
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda",
            "persistent_workers": False, "prefetch_factor": 2 if num_workers else None}


def train_loader(dataset: CocoPanopticDataset, batch_size: int, seed: int, info: DistInfo, start: int, end: int,
                 num_workers: int) -> DataLoader:
    """Loader over iterations ``start .. end - 1`` (images collated and padded to multiples of 32)."""
    sampler = IterationBatchSampler(len(dataset), batch_size, seed, info.rank, info.world_size, start, end)
    return DataLoader(_EpochItems(dataset), batch_sampler=sampler,
                      collate_fn=functools.partial(collate, size_divisor=SIZE_DIVISOR),
                      generator=torch.Generator().manual_seed(seed), **_loader_kwargs(num_workers, info.device))


def eval_loader(dataset: CocoPanopticDataset, batch_size: int, info: DistInfo, num_workers: int,
                max_images: int | None = None) -> DataLoader:
    """Loader over this rank's share (``rank::world_size``) of the first ``max_images`` items, yielding
    ``(images, targets, dataset indices)``."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = list(range(info.rank, n, info.world_size))
    return DataLoader(_Indexed(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=_collate_indexed,
                      generator=torch.Generator().manual_seed(0), **_loader_kwargs(num_workers, info.device))
