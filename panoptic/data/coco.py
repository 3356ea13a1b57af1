"""A torch ``Dataset`` over a COCO-panoptic folder (images + id PNGs + JSON), validated up front.

The annotation file is checked when the dataset is built (JSON structure, category table, duplicate
ids, unknown categories, missing files), so errors surface before a long run starts; every item is
checked again when loaded (PNG readable and RGB, every PNG id in ``segments_info``, image and PNG
sizes agree). :meth:`CocoPanopticDataset.validate` with ``deep=True`` runs the per-item checks on the
whole set. Every error is a :class:`PanopticDataError` (a ``ValueError``) that names the file and the fix.

Example:
    >>> import tempfile
    >>> from panoptic.data.synthetic import write_synthetic_dataset
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = write_synthetic_dataset(d, 2, 32, splits={"train": 1})
    ...     ds = CocoPanopticDataset(f"{d}/images", f"{d}/panoptic_train.json", f"{d}/panoptic")
    ...     image, target = ds[0]
    ...     tuple(image.shape), target.semantic.dtype, len(ds)
    ((3, 32, 32), torch.int64, 2)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..categories import CategoryTable
from ..errors import PanopticError
from ..formats import from_coco
from ..structures import PanopticResult
from .targets import PanopticTarget, build_target
from .transforms import Sample, Transform

__all__ = ["CocoPanopticDataset", "PanopticDataError"]


class PanopticDataError(PanopticError, ValueError):
    """A problem in a COCO-panoptic dataset; the message names the file and the fix."""


@dataclass(frozen=True)
class _Item:
    image_id: int | str
    image_path: Path
    png_path: Path
    file_name: str
    segments_info: list[dict[str, Any]]
    size: tuple[int, int] | None  # (height, width) from the JSON, when given


def _first(items: list[Any], k: int = 5) -> str:
    return ", ".join(repr(x) for x in items[:k]) + (f" (+{len(items) - k} more)" if len(items) > k else "")


class CocoPanopticDataset(Dataset):
    """COCO-panoptic ground truth as ``(image, PanopticTarget)`` pairs.

    ``image`` is a ``(3, H, W)`` float32 tensor with values in ``[0, 1]`` (RGB, not normalized).
    The target (:class:`~panoptic.data.targets.PanopticTarget`) holds ``semantic (H, W)`` int64
    contiguous ids (stuff first, then things; 255 = void and padding; crowd keeps its class),
    ``boxes (N, 4)`` / ``labels (N,)`` / ``masks (N, H, W)`` of the non-crowd instances,
    ``crowd_mask (H, W)``, the ``panoptic`` :class:`~panoptic.structures.PanopticResult`,
    ``image_id``, ``file_name``, ``image_size`` and ``orig_size``.

    Args:
        image_root: Folder of the RGB images (``images[].file_name`` is relative to it).
        panoptic_json: The COCO-panoptic JSON (``images``, ``annotations``, ``categories``).
        panoptic_root: Folder of the id PNGs (``annotations[].file_name`` is relative to it).
        transforms: Joint transform (e.g. :func:`~panoptic.data.transforms.build_transforms`).
        seed: Seed of the transforms' randomness; item ``i`` in epoch ``e`` uses
            ``numpy.random.default_rng([seed, e, i])``, whatever the worker layout.
        recursive_images: Find images by base name anywhere under ``image_root`` (for nested
            image folders); base names must then be unique.
        image_file: Maps an ``images`` entry of the JSON to its path relative to ``image_root``,
            for layouts whose ``file_name`` does not name the file (e.g. the Cityscapes converter's,
            see :func:`~panoptic.data.cityscapes.cityscapes_image_file`); default ``file_name``.
        table: Category table to use; default ``CategoryTable.from_coco(json["categories"])``.

    Raises:
        PanopticDataError: If the JSON, its categories or the files it names are broken.
    """

    def __init__(self, image_root: str | Path, panoptic_json: str | Path, panoptic_root: str | Path,
                 transforms: Transform | None = None, *, seed: int = 0, recursive_images: bool = False,
                 image_file: Callable[[Mapping[str, Any]], str | Path] | None = None,
                 table: CategoryTable | None = None) -> None:
        self.image_root = Path(image_root)
        self.panoptic_json = Path(panoptic_json)
        self.panoptic_root = Path(panoptic_root)
        self.transforms = transforms
        self.image_file = image_file
        self.seed = seed
        self.epoch = 0
        data = self._load_json()
        try:
            self.table = table or CategoryTable.from_coco(data["categories"])
        except ValueError as e:
            raise PanopticDataError(f"{self.panoptic_json}: bad 'categories': {e}") from None
        self.items = self._index(data, recursive_images)

    # ------------------------------------------------------------------------------ construction
    def _fail(self, msg: str) -> PanopticDataError:
        return PanopticDataError(f"{self.panoptic_json}: {msg}")

    def _load_json(self) -> dict[str, Any]:
        if not self.panoptic_json.is_file():
            raise PanopticDataError(f"{self.panoptic_json}: annotation file not found; pass the path of the "
                                    "COCO-panoptic JSON (e.g. panoptic_val2017.json).")
        try:
            data = json.loads(self.panoptic_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(f"cannot parse the JSON ({e}); regenerate or repair the file.") from None
        if not isinstance(data, dict):
            raise self._fail("top level must be an object with 'images', 'annotations' and 'categories'.")
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
        if missing:
            raise self._fail(f"missing or non-list keys {missing}; a COCO-panoptic JSON needs 'images', "
                             "'annotations' and 'categories' lists.")
        return data

    def _index(self, data: dict[str, Any], recursive: bool) -> list[_Item]:
        images: dict[Any, Mapping[str, Any]] = {}
        for n, img in enumerate(data["images"]):
            if not isinstance(img, Mapping) or "id" not in img or "file_name" not in img:
                raise self._fail(f"images[{n}] needs 'id' and 'file_name', got {img!r}.")
            if img["id"] in images:
                raise self._fail(f"duplicate image id {img['id']!r} in 'images'; image ids must be unique.")
            images[img["id"]] = img
        known_cats = set(self.table.dataset_ids)
        by_image: dict[Any, Mapping[str, Any]] = {}
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(ann):
                raise self._fail(f"annotations[{n}] needs 'image_id', 'file_name' and 'segments_info'.")
            where = f"annotation of image {ann['image_id']!r} ({ann['file_name']})"
            if not isinstance(ann["segments_info"], list) or not all(isinstance(s, Mapping)
                                                                     for s in ann["segments_info"]):
                raise self._fail(f"{where}: 'segments_info' must be a list of objects with 'id' and "
                                 "'category_id'.")
            if ann["image_id"] not in images:
                raise self._fail(f"{where}: image_id is not in 'images'; add the image entry or drop the "
                                 "annotation.")
            if ann["image_id"] in by_image:
                raise self._fail(f"{where}: image has two annotations; keep one per image.")
            ids = [s.get("id") for s in ann["segments_info"]]
            dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
            if dupes:
                raise self._fail(f"{where}: duplicate segment ids {dupes}; each segment needs a unique id.")
            if 0 in ids or None in ids:
                raise self._fail(f"{where}: a segment has id 0 or no id; ids start at 1 (0 is void).")
            bad = sorted({s.get("category_id") for s in ann["segments_info"]} - known_cats, key=str)
            if bad:
                raise self._fail(f"{where}: unknown category ids {bad}; add them to 'categories' "
                                 f"(known: {sorted(known_cats)}) or fix the segments.")
            by_image[ann["image_id"]] = ann
        unannotated = [i for i in images if i not in by_image]
        if unannotated:
            raise self._fail(f"images {_first(unannotated)} have no annotation; add an annotation "
                             "(segments_info may be empty) or remove them from 'images'.")
        pngs = Counter(a["file_name"] for a in by_image.values())
        if len(pngs) != len(by_image):
            shared = [k for k, v in pngs.items() if v > 1]
            raise self._fail(f"annotations share PNG file names {_first(shared)}; each image needs its own "
                             "PNG.")
        lookup = self._image_lookup() if recursive else None
        items, missing = [], []
        for image_id, img in images.items():
            ann = by_image[image_id]
            name = str(self.image_file(img) if self.image_file is not None else img["file_name"])
            image_path = self.image_root / name if lookup is None else lookup.get(Path(name).name,
                                                                                self.image_root / name)
            png_path = self.panoptic_root / ann["file_name"]
            missing += [str(p) for p in (image_path, png_path) if not p.is_file()]
            size = (int(img["height"]), int(img["width"])) if "height" in img and "width" in img else None
            items.append(_Item(image_id, image_path, png_path, str(ann["file_name"]),
                               list(ann["segments_info"]), size))
        if missing:
            hint = "" if recursive else ", or pass recursive_images=True for nested image folders"
            raise self._fail(f"{len(missing)} files are missing: {_first(missing)}. Check image_root="
                             f"{self.image_root} and panoptic_root={self.panoptic_root}{hint}.")
        return items

    def _image_lookup(self) -> dict[str, Path]:
        lookup: dict[str, Path] = {}
        for dirpath, _, files in os.walk(self.image_root):
            for f in files:
                if f in lookup:
                    raise self._fail(f"image name {f!r} appears twice under {self.image_root} ({lookup[f]} "
                                     f"and {Path(dirpath) / f}); recursive_images needs unique names.")
                lookup[f] = Path(dirpath) / f
        return lookup

    # ------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Change the transforms' randomness for a new epoch."""
        self.epoch = epoch

    def load_panoptic(self, index: int) -> PanopticResult:
        """The untransformed ground truth of item ``index``, with every per-item check."""
        item = self.items[index]
        png = _read_rgb(item.png_path, "panoptic PNG", require_rgb=True)
        if item.size is not None and png.shape[:2] != item.size:
            raise PanopticDataError(f"{item.png_path}: PNG is {png.shape[0]}x{png.shape[1]} (HxW) but "
                                    f"{self.panoptic_json} says {item.size[0]}x{item.size[1]}; fix the JSON "
                                    "entry or regenerate the PNG.")
        try:
            return from_coco(png, item.segments_info, self.table, name=str(item.png_path))
        except ValueError as e:
            raise PanopticDataError(str(e)) from None

    def load_image(self, index: int) -> torch.Tensor:
        """The image of item ``index`` as ``(3, H, W)`` uint8."""
        item = self.items[index]
        array = _read_rgb(item.image_path, "image", require_rgb=False)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, PanopticTarget]:
        item = self.items[index]
        panoptic = self.load_panoptic(index)
        image = self.load_image(index)
        if tuple(image.shape[1:]) != panoptic.image_size:
            raise _size_mismatch(item, (int(image.shape[1]), int(image.shape[2])), panoptic.image_size)
        sample = Sample(image.float().div_(255.0), panoptic)
        if self.transforms is not None:
            sample = self.transforms(sample, np.random.default_rng([self.seed, self.epoch, index]))
        target = build_target(sample.panoptic, self.table, item.image_id, item.file_name, sample.image_size,
                              panoptic.image_size)
        return sample.image, target

    def validate(self, deep: bool = False) -> None:
        """Check every item before a long run: the fast checks already ran at construction, so this
        does work only with ``deep=True``: decode every PNG (ids vs ``segments_info``, JSON size)
        and read every image header (size), about a millisecond per small image.

        Raises:
            PanopticDataError: On the first broken item.
        """
        if not deep:
            return
        for k, item in enumerate(self.items):
            panoptic = self.load_panoptic(k)
            try:
                with Image.open(item.image_path) as im:
                    size = (im.height, im.width)
            except (OSError, UnidentifiedImageError, SyntaxError) as e:
                raise PanopticDataError(f"{item.image_path}: cannot read the image ({e}); restore or replace "
                                        "the file.") from None
            if size != panoptic.image_size:
                raise _size_mismatch(item, size, panoptic.image_size)

    def __repr__(self) -> str:
        return (f"CocoPanopticDataset({len(self)} images, json={self.panoptic_json}, "
                f"{self.table.num_stuff} stuff + {self.table.num_things} things)")


def _read_rgb(path: Path, what: str, require_rgb: bool) -> np.ndarray:
    """Decode a file to ``(H, W, 3)`` uint8, raising :class:`PanopticDataError` that names the file."""
    try:
        with Image.open(path) as im:
            if require_rgb and im.mode != "RGB":
                raise PanopticDataError(
                    f"{path}: {what} has mode {im.mode!r}; COCO-panoptic PNGs must be 8-bit RGB with "
                    "id = R + 256 G + 65536 B. Re-encode it (e.g. panoptic.formats.id2rgb on the id map).")
            return np.array(im.convert("RGB"))
    except PanopticDataError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise PanopticDataError(f"{path}: cannot read the {what} ({type(e).__name__}: {e}); the file is "
                                "corrupt or truncated, so restore or regenerate it.") from None


def _size_mismatch(item: _Item, image_size: tuple[int, int], png_size: tuple[int, int]) -> PanopticDataError:
    return PanopticDataError(f"{item.image_path}: image is {image_size[0]}x{image_size[1]} (HxW) but its "
                             f"panoptic PNG {item.png_path} is {png_size[0]}x{png_size[1]}; they must have "
                             "the same size (re-export one of them).")
