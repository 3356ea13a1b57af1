"""The documented Cityscapes path: real ``csCreatePanopticImgs --use-train-id`` -> CocoPanopticDataset.

Needs ``cityscapesscripts`` (``pip install --no-deps cityscapesscripts==2.3.0 && pip install pyquaternion``).
Skipped without it, unless ``PANOPTIC_REQUIRE_ORACLE=1``, which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic.data import cityscapes_panoptic
from panoptic.data.cityscapes import cityscapes_panoptic_paths


def _require_converter():
    if os.environ.get("PANOPTIC_REQUIRE_ORACLE") == "1":
        try:
            from cityscapesscripts.helpers import labels
            from cityscapesscripts.preparation import createPanopticImgs  # noqa: F401
        except ImportError as e:
            pytest.fail(f"PANOPTIC_REQUIRE_ORACLE=1 but cityscapesscripts is unusable ({e}); install it with "
                        "`pip install --no-deps cityscapesscripts==2.3.0 && pip install pyquaternion`.")
        return labels
    pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
    from cityscapesscripts.helpers import labels

    return labels


H, W = 24, 40
ROAD, SIDEWALK, BUILDING, SKY, PERSON, CAR, EGO, UNLABELED = 7, 8, 11, 23, 24, 26, 1, 0


def _instance_ids(variant: int) -> np.ndarray:
    """A Cityscapes ``instanceIds`` map: label id for stuff/crowd, ``label * 1000 + k`` for instances."""
    ids = np.full((H, W), SKY, dtype=np.int32)
    ids[12:, :] = ROAD
    ids[8:12, 30:] = BUILDING
    ids[20:, :6] = SIDEWALK
    ids[22:, 10:30] = EGO  # ignoreInEval -> void
    ids[0, :] = UNLABELED  # void
    ids[10:16, 4 + variant:12 + variant] = CAR * 1000  # car instance 0
    ids[13:18, 16:24] = CAR * 1000 + 1  # car instance 1
    ids[6:12, 20:26] = PERSON  # a group of people without instance ids -> crowd
    return ids


def _write_cityscapes(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    written = {}
    for variant, city in enumerate(("aachen", "bremen")):
        stem = f"{city}_000000_000019"
        gt = root / "gtFine" / "val" / city
        img = root / "leftImg8bit" / "val" / city
        gt.mkdir(parents=True)
        img.mkdir(parents=True)
        ids = _instance_ids(variant)
        Image.fromarray(ids.astype(np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
        labels = np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8)
        Image.fromarray(labels).save(gt / f"{stem}_gtFine_labelIds.png")
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(img / f"{stem}_leftImg8bit.png")
        written[stem] = rgb
    return written


def test_cs_create_panoptic_imgs_output_loads(tmp_path):
    cs_labels = _require_converter()
    images = _write_cityscapes(tmp_path)
    gt_fine = tmp_path / "gtFine"
    cmd = [sys.executable, "-m", "cityscapesscripts.preparation.createPanopticImgs", "--dataset-folder",
           str(gt_fine), "--output-folder", str(gt_fine), "--use-train-id", "--set-names", "val"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, json_path, png_root = cityscapes_panoptic_paths(tmp_path, "val")
    assert json_path.is_file() and png_root.is_dir()

    ds = cityscapes_panoptic(tmp_path, "val")
    assert len(ds) == 2
    assert ds.table.num_stuff == 11 and ds.table.num_things == 8
    assert ds.table.dataset_ids == tuple(range(19)), "train ids, stuff first"
    train_id = np.full(256, 255, dtype=np.int64)
    for lab in cs_labels.labels:
        if not lab.ignoreInEval and 0 <= lab.id < 256:
            train_id[lab.id] = lab.trainId
    for k, item in enumerate(ds.items):
        stem = str(item.image_id)
        image, t = ds[k]
        assert np.array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), images[stem])
        ids = _instance_ids(k)
        expected = torch.from_numpy(train_id[np.where(ids >= 1000, ids // 1000, ids)])
        assert torch.equal(t.semantic, expected)
        assert (t.semantic[0] == 255).all() and (t.semantic[22:, 10:30] == 255).all()
        assert torch.equal(t.crowd_mask, torch.from_numpy(ids == PERSON))
        assert (t.semantic[t.crowd_mask] == 11).all(), "crowd people keep the person class"
        car = ds.table.to_contiguous(13) - ds.table.num_stuff
        assert t.labels.tolist() == [car, car]
        masks = {tuple(m.nonzero()[0].tolist()): m for m in t.masks}
        assert len(masks) == 2
        for inst in (CAR * 1000, CAR * 1000 + 1):
            assert any(torch.equal(m, torch.from_numpy(ids == inst)) for m in t.masks)
        t.panoptic.validate(ds.table)
    ds.validate(deep=True)
