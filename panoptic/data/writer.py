"""Write :class:`~panoptic.structures.PanopticResult` s as a COCO-panoptic folder of PNGs plus a JSON.

The output is exactly what panopticapi's ``pq_compute(gt_json, pred_json, gt_folder, pred_folder)``
reads: one RGB PNG per image (``id = R + 256 G + 65536 B``, 0 = void) and a JSON with
``annotations[{image_id, file_name, segments_info}]`` and ``categories``.

Crash safety: every PNG and the JSON are first written to temporary names (:class:`~panoptic.atomic.AtomicFiles`)
and renamed into place only when all exist, the JSON last; a failure before that leaves the previous outputs
untouched, and a JSON never names a missing, half-written or other run's PNG.

Example:
    >>> import tempfile, numpy as np
    >>> from panoptic.data.synthetic import generate_scene
    >>> scene = generate_scene(np.random.default_rng(0), 32)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_coco_predictions([scene.panoptic], [7], scene.table, f"{d}/pred.json", f"{d}/pred")
    ...     path.name
    'pred.json'
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import AtomicFiles
from ..categories import CategoryTable
from ..formats import to_coco
from ..structures import PanopticResult

__all__ = [
    "CocoPanopticWriter",
    "write_coco_predictions",
]


def encode_png(array: np.ndarray) -> bytes:
    """``(H, W, 3)`` or ``(H, W)`` uint8 array -> PNG bytes (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


class CocoPanopticWriter:
    """Stream results into a COCO-panoptic PNG folder; the JSON is written only by :meth:`close`.

    Used as a context manager, the files appear on a clean exit and not at all after an exception. The PNGs
    are written as they come, to temporary names; :meth:`close` writes the JSON and renames everything into
    place, the JSON last (unless ``files`` is given: then its owner commits them, with its other files).

    Args:
        table: Maps contiguous categories to dataset ids for ``category_id``.
        out_json: The JSON to write.
        out_folder: Folder for the PNGs (created).
        ground_truth: Drop the prediction-only keys ``score`` and ``source`` from ``segments_info``.
        info: Optional ``info`` dict stored in the JSON.
        files: The :class:`~panoptic.atomic.AtomicFiles` to write into; its owner calls ``commit`` (default:
            a private one committed by :meth:`close`).

    Example:
        >>> import tempfile, numpy as np
        >>> from panoptic.data.synthetic import generate_scene
        >>> scene = generate_scene(np.random.default_rng(0), 32)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with CocoPanopticWriter(scene.table, f"{d}/p.json", f"{d}/p") as w:
        ...         w.add(scene.panoptic, image_id=1, file_name="a.png")["file_name"]
        'a.png'
    """

    def __init__(self, table: CategoryTable, out_json: str | Path, out_folder: str | Path, *,
                 ground_truth: bool = False, info: dict[str, Any] | None = None,
                 files: AtomicFiles | None = None) -> None:
        self.table = table
        self.files = files if files is not None else AtomicFiles()
        self._owns_files = files is None
        self.out_json = Path(out_json)
        self.out_folder = Path(out_folder)
        self.ground_truth = ground_truth
        self.info = info
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._ids: set[int | str] = set()
        self.out_folder.mkdir(parents=True, exist_ok=True)
        self.out_json.parent.mkdir(parents=True, exist_ok=True)

    def add(self, result: PanopticResult, image_id: int | str, file_name: str | None = None,
            image_file_name: str | None = None) -> dict[str, Any]:
        """Write one image's PNG now and remember its annotation.

        Args:
            result: The segmentation.
            image_id: COCO ``image_id`` (must be unique, and match the ground truth's for evaluation).
            file_name: PNG name inside ``out_folder``; default ``f"{image_id}.png"``. Any other
                suffix (e.g. the ``.jpg`` of the image) is replaced by ``.png``.
            image_file_name: If given, an ``images`` entry ``{id, file_name, height, width}`` is
                recorded for the RGB image (needed in ground-truth JSONs).

        Returns:
            The annotation ``{image_id, file_name, segments_info}``.

        Raises:
            ValueError: On a duplicate ``image_id`` or ``file_name``.
        """
        name = Path(file_name or f"{image_id}.png").with_suffix(".png").as_posix()
        if image_id in self._ids:
            raise ValueError(f"duplicate image_id {image_id!r}; every result needs its own image_id.")
        if name in self._names:
            raise ValueError(f"duplicate PNG file_name {name!r}; pass distinct file_names.")
        png, segments_info = to_coco(result, self.table)
        if self.ground_truth:
            for s in segments_info:
                s.pop("score", None)
                s.pop("source", None)
        self.files.write_bytes(self.out_folder / name, encode_png(png))
        ann = {"image_id": image_id, "file_name": name, "segments_info": segments_info}
        self.annotations.append(ann)
        self._ids.add(image_id)
        self._names.add(name)
        if image_file_name is not None:
            h, w = result.image_size
            self.images.append({"id": image_id, "file_name": image_file_name, "height": h, "width": w})
        return ann

    def close(self) -> Path:
        """Write the JSON and (with a private ``files``) rename every file into place, the JSON last."""
        data: dict[str, Any] = {}
        if self.info is not None:
            data["info"] = self.info
        if self.images or self.ground_truth:
            data["images"] = self.images
        data["annotations"] = self.annotations
        data["categories"] = self.table.to_coco()
        self.files.write_bytes(self.out_json, json.dumps(data, separators=(",", ":")).encode(), index=True)
        if self._owns_files:
            self.files.commit()
        return self.out_json

    def discard(self) -> None:
        """Forget the results: delete the temporary files (the previous outputs stay as they were)."""
        self.files.discard()

    def __enter__(self) -> CocoPanopticWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif self._owns_files:
            self.discard()


def write_coco_predictions(results: Iterable[PanopticResult], image_ids: Sequence[int | str],
                           table: CategoryTable, out_json: str | Path, out_folder: str | Path,
                           file_names: Sequence[str] | None = None) -> Path:
    """Write predictions in the form panopticapi's ``pq_compute`` reads (PNGs first, JSON last).

    Args:
        results: One result per image (a generator is fine: PNGs are written as it yields).
        image_ids: The ground truth's ``image_id`` of each result.
        table: Category table of the results (``category_id`` is written as dataset ids).
        out_json: Prediction JSON path.
        out_folder: Prediction PNG folder.
        file_names: PNG names, e.g. the ground-truth annotations' ``file_name``; default
            ``f"{image_id}.png"``.

    Returns:
        ``out_json``.

    Raises:
        ValueError: If the numbers of results, image ids and file names differ, or ids repeat.
    """
    names: Sequence[str | None] = file_names if file_names is not None else [None] * len(image_ids)
    if len(names) != len(image_ids):
        raise ValueError(f"got {len(image_ids)} image_ids but {len(names)} file_names; pass one per result.")
    with CocoPanopticWriter(table, out_json, out_folder) as writer:
        it = iter(results)
        for k, (image_id, name) in enumerate(zip(image_ids, names, strict=True)):
            result = next(it, None)
            if result is None:
                raise ValueError(f"got {k} results for {len(image_ids)} image_ids; pass one image_id per result.")
            writer.add(result, image_id, name)
        if next(it, None) is not None:
            raise ValueError(f"got more results than the {len(image_ids)} image_ids; pass one image_id per "
                             "result.")
    return writer.out_json
