"""Cityscapes via the official converter: ``cityscapesscripts`` -> COCO-panoptic -> ``CocoPanopticDataset``.

There is no Cityscapes-specific loader: convert once with the official script, then read the
result as any COCO-panoptic dataset.

1. Install the converter. It only needs numpy, Pillow and pyquaternion; its other dependencies
   are for viewers and 3D tools, and it also pulls the ``typing`` backport, which should not be
   installed on Python 3::

       pip install --no-deps cityscapesscripts==2.3.0 && pip install pyquaternion

2. Convert the fine annotations (``gtFine/<split>/<city>/*_instanceIds.png``). With
   ``--use-train-id`` the 19 training categories get their train ids 0..18 as category ids::

       csCreatePanopticImgs --dataset-folder $CITYSCAPES/gtFine --output-folder $CITYSCAPES/gtFine \\
           --use-train-id --set-names val train

   This writes ``gtFine/cityscapes_panoptic_<split>_trainId.json`` and the PNG folder
   ``gtFine/cityscapes_panoptic_<split>_trainId/``. In ``instanceIds``, ids below 1000 on thing
   classes (e.g. a group of people) become ``iscrowd`` segments, and categories marked
   ``ignoreInEval`` become void (0).

3. Load it::

       ds = cityscapes_panoptic("$CITYSCAPES", "val")   # add transforms=... for training

   The converter writes image ``file_name`` s such as ``aachen_000000_000019_gtFine_leftImg8bit.png``,
   which name no file: the images are ``leftImg8bit/<split>/<city>/<image_id>_leftImg8bit.png``.
   :func:`cityscapes_image_file` maps an entry to that path, so by hand it reads::

       ds = CocoPanopticDataset(f"{root}/leftImg8bit/val",
                                f"{root}/gtFine/cityscapes_panoptic_val_trainId.json",
                                f"{root}/gtFine/cityscapes_panoptic_val_trainId",
                                image_file=cityscapes_image_file)

   The category table comes from the JSON: 11 stuff then 8 things, so contiguous id = train id.
   Image ids are strings such as ``"aachen_000000_000019"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco import CocoPanopticDataset
from .transforms import Transform

__all__ = [
    "cityscapes_image_file",
    "cityscapes_panoptic",
]


def cityscapes_image_file(image: Mapping[str, Any]) -> str:
    """``<city>/<image_id>_leftImg8bit.png`` for an ``images`` entry written by ``csCreatePanopticImgs``.

    Example:
        >>> cityscapes_image_file({"id": "aachen_000000_000019"})
        'aachen/aachen_000000_000019_leftImg8bit.png'
    """
    image_id = str(image["id"])
    return f"{image_id.split('_')[0]}/{image_id}_leftImg8bit.png"


def cityscapes_panoptic_paths(root: str | Path, split: str = "val", use_train_id: bool = True,
                              output_folder: str | Path | None = None) -> tuple[Path, Path, Path]:
    """``(image_root, panoptic_json, panoptic_root)`` of a converted Cityscapes split.

    Args:
        root: The Cityscapes folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        use_train_id: Whether the conversion used ``--use-train-id``.
        output_folder: The converter's ``--output-folder``; default ``root/gtFine``.
    """
    root = Path(root)
    out = Path(output_folder) if output_folder is not None else root / "gtFine"
    base = f"cityscapes_panoptic_{split}{'_trainId' if use_train_id else ''}"
    return root / "leftImg8bit" / split, out / f"{base}.json", out / base


def cityscapes_panoptic(root: str | Path, split: str = "val", transforms: Transform | None = None, *,
                        use_train_id: bool = True, output_folder: str | Path | None = None,
                        seed: int = 0) -> CocoPanopticDataset:
    """A :class:`CocoPanopticDataset` over a Cityscapes split converted by ``csCreatePanopticImgs``.

    Args:
        root: The Cityscapes folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: The converted split.
        transforms: Joint transforms, as for :class:`CocoPanopticDataset`.
        use_train_id: Whether the conversion used ``--use-train-id``.
        output_folder: The converter's ``--output-folder``; default ``root/gtFine``.
        seed: Seed of the transforms.
    """
    paths = cityscapes_panoptic_paths(root, split, use_train_id, output_folder)
    return CocoPanopticDataset(*paths, transforms, seed=seed, image_file=cityscapes_image_file)
