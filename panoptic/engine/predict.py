"""Inference on image files: COCO-panoptic PNG + JSON per image and an overlay picture, with optional
multi-scale and flip testing.

Multi-scale / flip test (as in UPSNet's supplement): the **semantic logits** are averaged over the scales (and
their horizontal flips), each resized back to the base resolution; the **instances** come from the base scale
(1.0); the fusion then runs once on the averaged logits and the base detections.

Output folder::

    OUT/panoptic.json            COCO-panoptic JSON of every image (images, annotations, categories)
    OUT/panoptic/<id>.png        id PNGs (id = R + 256 G + 65536 B, 0 = void)
    OUT/segments/<id>.json       the image's annotation {image_id, file_name, segments_info, height, width}
    OUT/overlay/<id>.png         the segmentation blended over the image, with thing outlines, category labels
                                 and a legend below (small images enlarged; ``labels=False``: the bare blend)

where ``<id>`` is the image's file stem (made unique with ``_1``, ``_2``, ... when stems repeat). The JSON's
``image_id`` is that stem too, or, for the images of a COCO JSON (:func:`images_from_json`), their id there,
so that the predictions can be evaluated against that ground truth as they are.

Into an existing folder: every file is first written under a temporary name and the files are renamed into place
only once all images are done, ``panoptic.json`` last (:class:`~panoptic.atomic.AtomicFiles`), so a failure
part-way (a bad image, a full disk) leaves the previous outputs exactly as they were.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..atomic import AtomicFiles
from ..categories import CategoryTable
from ..data import PanopticDataError
from ..data.transforms import ResizeShortSide, resize_panoptic
from ..data.writer import CocoPanopticWriter, encode_png
from ..fusion import FUSIONS, PanopticFusion, build_fusion
from ..models import PanopticModel
from ..structures import PanopticResult
from ..visualize import annotate, overlay
from .config import ConfigError

__all__ = ["predict_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class PredictOutput:
    """One image's prediction.

    Attributes:
        image_path: The input file.
        image_id: Its id in the outputs: the unique file stem, or the id given with the image (e.g. from
            :func:`images_from_json`).
        result: The panoptic segmentation at the image's original size.
        files: Written files by kind (``png``, ``json``, ``overlay``); empty without ``out_dir``.
    """

    image_path: Path
    image_id: int | str
    result: PanopticResult
    files: dict[str, Path] = field(default_factory=dict)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder's images with :data:`IMAGE_SUFFIXES`, sorted, not recursive).

    Raises:
        FileNotFoundError: If an input does not exist.
        ValueError: If no image is found.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; pass image files or folders of images.")
    if not paths:
        raise PanopticDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}.")
    return paths


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as a ``(3, H, W)`` float tensor in ``[0, 1]`` (RGB).

    Raises:
        ValueError: If the file is not a readable image.
    """
    try:
        with Image.open(path) as im:
            array = torch.from_numpy(np.array(im.convert("RGB")))
    except _IMAGE_ERRORS as e:
        raise _image_error(path, e) from None
    return array.permute(2, 0, 1).float().div_(255.0)


_IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def _image_error(path: str | Path, e: Exception) -> PanopticDataError:
    return PanopticDataError(f"{path}: cannot read the image ({type(e).__name__}: {e}); remove or replace the file.")


def _check_image(path: Path) -> None:
    """Raise :func:`load_image`'s ``ValueError`` if ``path`` has no readable image header."""
    try:
        with Image.open(path):
            pass
    except _IMAGE_ERRORS as e:
        raise _image_error(path, e) from None


def fusion_note(name: str | None, model: PanopticModel) -> str | None:
    """A note when ``--fusion upsnet`` runs UPSNet's head on a model not trained with its panoptic loss.

    The head has no parameters, so it runs on any model's logits (the paper's ablation does so), but such a
    model's logits were never trained for it; the note says so and what else to pass. ``None`` otherwise.
    """
    if name != "upsnet" or model.train_panoptic_loss:
        return None
    return (f"this checkpoint holds {model.description} not trained with UPSNet's panoptic head (no panoptic loss); "
            "--fusion upsnet applies the parameter-free head to its logits anyway (as in the paper's ablation). "
            "Use --fusion heuristic or the model's own fusion (the default) for the output it was trained for.")


def make_fusion(name: str | None, table: CategoryTable, model: PanopticModel) -> PanopticFusion | None:
    """``None``/``"model"`` -> ``None`` (the model's own fusion); ``"upsnet"`` -> :class:`UPSNetFusion`;
    ``"heuristic"`` -> :class:`HeuristicFusion` (``"upsnet"`` flavor). The model's fusion's stuff area limit is
    kept.

    Raises:
        ValueError: For another name.
    """
    if name in (None, "model"):
        return None
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; use 'upsnet', 'heuristic' or 'model'.")
    limit = getattr(model.fusion, "stuff_area_limit", None)
    return build_fusion(name, table, **({"stuff_area_limit": int(limit)} if limit is not None else {}))


@torch.no_grad()
def predict_image(model: PanopticModel, image: torch.Tensor, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                  fusion: PanopticFusion | None = None, short_side: int | None = None,
                  max_size: int | None = None) -> PanopticResult:
    """Panoptic segmentation of one ``(3, H, W)`` image in ``[0, 1]``, at its original size.

    Args:
        model: A panoptic model in eval mode (its device is used).
        image: The image.
        scales: Scales (relative to the base size) whose semantic logits are averaged.
        flip: Also average the logits of the horizontally flipped image at every scale.
        fusion: Fusion to use; default the model's.
        short_side: Resize to this short side first (the base size); the result is resized back (nearest).
        max_size: Long-side cap of that resize.
    """
    check_scales(scales)
    device = next(model.parameters()).device
    x = image.to(device)[None]
    orig = (int(image.shape[-2]), int(image.shape[-1]))
    if short_side is not None:
        size = ResizeShortSide(short_side, max_size).output_size(orig, short_side)
        if size != orig:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = model.normalize(x)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    check_scales(scales, (h, w))
    base = model(x)[0]
    if list(scales) == [1.0] and not flip and fusion is None:
        result = base.panoptic
    else:
        total = torch.zeros_like(base.semantic_logits)
        count = 0
        for s in scales:
            for flipped in (False, True) if flip else (False,):
                if s == 1.0 and not flipped:
                    logits = base.semantic_logits
                else:
                    size = (max(1, round(h * s)), max(1, round(w * s)))
                    xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                    logits = model.semantic_logits(xs.flip(-1) if flipped else xs)[0]
                    logits = logits.flip(-1) if flipped else logits
                    if logits.shape[-2:] != (h, w):
                        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                total += logits.float()
                count += 1
        result = (fusion or model.fusion)(total[None] / count, [base.instances])[0]
    result = result.to("cpu")
    return result if result.image_size == orig else resize_panoptic(result, orig)


MIN_SCALED_SIDE = 16  # below this a scale gives the FPN almost no pixels: a typo such as 0.01, not a test scale


def check_scales(scales: Sequence[float], size: tuple[int, int] | None = None) -> None:
    """Refuse test scales that are not positive, or that shrink a ``(H, W)`` image below
    :data:`MIN_SCALED_SIDE` pixels on its short side.

    Raises:
        ConfigError: Naming the scale and the smallest scale the image allows.
    """
    if not scales:
        raise ConfigError("give at least one test scale, e.g. --scales 1.0.")
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ConfigError(f"test scales must be positive numbers (e.g. --scales 0.75 1.0 1.25), got {bad}.")
    if size is not None:
        short = min(size)
        low = [s for s in scales if round(short * s) < MIN_SCALED_SIDE]
        if low:
            raise ConfigError(f"test scale {low[0]:g} shrinks the {size[0]}x{size[1]} image to a short side of "
                             f"{round(short * low[0])} px, below the {MIN_SCALED_SIDE} px the network needs; use "
                             f"scales >= {MIN_SCALED_SIDE / short:.3g} for this image.")


def images_from_json(json_path: str | Path, image_root: str | Path) -> tuple[list[Path], list[int | str]]:
    """The images listed in a COCO(-panoptic) JSON's ``images`` and their ids, for :func:`predict_images`.

    Predicting them with these ids gives a prediction JSON that ``panoptic evaluate`` / ``pq_compute``
    match to that ground truth directly.

    Args:
        json_path: A COCO or COCO-panoptic JSON with ``images: [{id, file_name, ...}]``.
        image_root: Folder the ``file_name``s are relative to.

    Returns:
        ``(paths, image_ids)`` in the JSON's order.

    Raises:
        ValueError: If the JSON cannot be read, has no ``images``, or lists a missing file.
    """
    try:
        data = json.loads(Path(json_path).read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PanopticDataError(f"cannot read the image list JSON {json_path}: {e}.") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise PanopticDataError(f"{json_path} has no 'images' list; pass a COCO or COCO-panoptic JSON.")
    paths, ids = [], []
    for entry in images:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise PanopticDataError(f"{json_path}: image entry {str(entry)[:200]} needs 'id' and 'file_name'.")
        paths.append(Path(image_root) / entry["file_name"])
        ids.append(entry["id"])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PanopticDataError(f"{len(missing)} images listed in {json_path} are missing under {image_root}, e.g. "
                         f"{missing[:3]}; pass the folder the file_names are relative to as the image root.")
    return paths, ids


def _unique_ids(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for p in paths:
        stem = p.stem
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        ids.append(stem if k == 0 else f"{stem}_{k}")
    return ids


def _output_ids(image_ids: Sequence[int | str] | None, stems: Sequence[str], num_paths: int) -> list[int | str]:
    """The JSON ``image_id`` of each image: the given ids (checked: one per file, unique) or the unique stems."""
    if image_ids is None:
        return list(stems)
    ids = list(image_ids)
    if len(ids) != len(stems) or len(stems) != num_paths:
        raise ValueError(f"image_ids has {len(ids)} ids for {num_paths} paths ({len(stems)} images); give "
                         "one id per image file (folders cannot take ids).")
    if len(set(ids)) != len(ids):
        raise ValueError("image_ids must be unique.")
    return ids


def predict_images(model: PanopticModel, table: CategoryTable, paths: Sequence[str | Path], *,
                   out_dir: str | Path | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                   fusion: str | PanopticFusion | None = None, short_side: int | None = None,
                   max_size: int | None = None, write_overlay: bool = True,
                   image_ids: Sequence[int | str] | None = None, labels: bool = True) -> list[PredictOutput]:
    """Predict image files (and folders of images) and, with ``out_dir``, write the outputs described above.

    Args:
        model: A panoptic model (put in eval mode).
        table: Its category table.
        paths: Image files or folders.
        out_dir: Output folder; ``None`` only returns the results.
        scales: See :func:`predict_image`.
        flip: See :func:`predict_image`.
        fusion: A fusion, or ``"upsnet"`` / ``"heuristic"`` / ``"model"`` (see :func:`make_fusion`).
        short_side: See :func:`predict_image`.
        max_size: See :func:`predict_image`.
        write_overlay: Write ``overlay/<id>.png``.
        image_ids: The ``image_id`` of each file of ``paths`` (files only, no folders) in the JSON, e.g. the
            ground truth's (:func:`images_from_json`); default: the unique file stem. Output files are named
            after the stem either way.
        labels: Overlays with instance outlines, category labels and a legend (:func:`~panoptic.visualize.annotate`);
            ``False`` writes the bare blend.

    Returns:
        One :class:`PredictOutput` per image, in input order.
    """
    check_scales(scales)
    model.eval()
    fuse = make_fusion(fusion, table, model) if fusion is None or isinstance(fusion, str) else fusion
    image_files = collect_images(paths)
    stems = _unique_ids(image_files)
    ids = _output_ids(image_ids, stems, len(paths))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for path in image_files:  # headers only: a bad file stops the run before anything is written
            _check_image(path)
    files = AtomicFiles()
    writer = CocoPanopticWriter(table, out / "panoptic.json", out / "panoptic", files=files) if out else None
    results = []
    try:
        for path, image_id, stem in zip(image_files, ids, stems, strict=True):
            image = load_image(path)
            result = predict_image(model, image, scales=scales, flip=flip, fusion=fuse, short_side=short_side,
                                   max_size=max_size)
            item = PredictOutput(path, image_id, result)
            if writer is not None and out is not None:
                item.files = _stage_outputs(writer, files, out, path, image_id, stem, image, result, table,
                                            write_overlay, labels)
            results.append(item)
        if writer is not None:
            writer.close()
            files.commit()
    except BaseException:
        files.discard()
        raise
    return results


def _stage_outputs(writer: CocoPanopticWriter, files: AtomicFiles, out: Path, path: Path, image_id: int | str,
                   stem: str, image: torch.Tensor, result: PanopticResult, table: CategoryTable,
                   write_overlay: bool, labels: bool) -> dict[str, Path]:
    """Write one image's PNG, segments JSON and overlay to their temporary names; returns them by kind."""
    ann = writer.add(result, image_id, f"{stem}.png", image_file_name=path.name)
    h, w = result.image_size
    seg = files.write_bytes(out / "segments" / f"{stem}.json",
                            json.dumps({**ann, "height": h, "width": w, "image_file": str(path)}).encode())
    written = {"png": out / "panoptic" / ann["file_name"], "json": seg}
    if write_overlay:
        rgb = (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        picture = overlay(rgb, result, table)
        if labels:
            picture = annotate(picture, result, table)
        written["overlay"] = files.write_bytes(out / "overlay" / f"{stem}.png", encode_png(picture))
    return written
