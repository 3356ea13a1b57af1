"""Synthetic scene generator and dataset writer: determinism, validity, coverage, COCO-panoptic layout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic.categories import Category, CategoryTable
from panoptic.data.cli import main as cli_main
from panoptic.data.synthetic import (
    SceneConfig,
    generate_scene,
    split_counts,
    synthetic_categories,
    write_synthetic_dataset,
)
from panoptic.data.targets import masks_to_boxes
from panoptic.formats import rgb2id

TABLE = synthetic_categories()


def _scene(seed: int, size: int | tuple[int, int] = 64):
    return generate_scene(np.random.default_rng(seed), size)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_category_table_shape():
    assert TABLE.num_stuff >= 3 and TABLE.num_things >= 4
    ids = TABLE.dataset_ids
    assert len(set(ids)) == len(ids)
    assert sorted(ids) != list(range(min(ids), min(ids) + len(ids))), "non-contiguous ids, like COCO"
    assert len({c.color for c in TABLE.categories}) == len(TABLE)
    assert [c.isthing for c in TABLE.categories] == [False] * TABLE.num_stuff + [True] * TABLE.num_things


def test_same_seed_same_scene_and_different_seed_differs():
    a, b, c = _scene(3), _scene(3), _scene(4)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.panoptic.equal(b.panoptic)
    assert torch.equal(a.amodal_masks, b.amodal_masks) and torch.equal(a.boxes, b.boxes)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("size", [32, 64, (48, 80), (96, 40)])
def test_scene_is_valid_ground_truth(size):
    for seed in range(6):
        scene = _scene(seed, size)
        hw = (size, size) if isinstance(size, int) else size
        assert scene.image.shape == (*hw, 3) and scene.image.dtype == np.uint8
        pan = scene.panoptic
        pan.validate(TABLE, one_stuff_segment=False)
        pan.validate(TABLE)  # the generator also keeps one segment per stuff category
        assert (pan.area > 0).all()
        assert not pan.iscrowd[~pan.isthing].any(), "only things can be crowd"
        assert pan.score.isnan().all() and (pan.source == -1).all()


def test_scene_instance_targets_agree_with_the_panoptic_map():
    for seed in range(6):
        s = _scene(seed, 80)
        pan = s.panoptic
        n = len(s.labels)
        assert s.masks.shape == s.amodal_masks.shape == (n, 80, 80)
        assert n == int((pan.isthing & ~pan.iscrowd).sum())
        for k in range(n):
            sid = int(s.segment_ids[k])
            assert torch.equal(s.masks[k], pan.segment_map == sid)
            assert int(pan.category[sid - 1]) == TABLE.num_stuff + int(s.labels[k])
            assert not pan.iscrowd[sid - 1]
            assert (s.amodal_masks[k] | ~s.masks[k]).all(), "the visible mask lies inside the full shape"
        assert torch.equal(s.boxes, masks_to_boxes(s.masks))
        assert torch.equal(s.semantic, pan.semantic_map(void=255))


def test_crowd_void_and_occlusion_occur():
    crowd = void = occluded = 0
    for seed in range(12):
        s = _scene(seed)
        crowd += int(s.panoptic.iscrowd.sum())
        void += int((s.panoptic.segment_map == 0).sum() > 0)
        occluded += int((s.amodal_masks & ~s.masks).any())
    assert crowd >= 2 and void >= 4 and occluded >= 4


def test_every_category_appears_over_twenty_scenes():
    seen = torch.zeros(len(TABLE), dtype=torch.bool)
    for seed in range(20):
        seen[_scene(seed).panoptic.category] = True
    missing = [n for n, s in zip(TABLE.names, seen.tolist(), strict=True) if not s]
    assert not missing, f"never generated: {missing}"


def test_instances_of_a_class_differ_in_colour():
    means: dict[int, list[np.ndarray]] = {}
    for seed in range(4):
        s = _scene(seed, 128)
        for k in range(len(s.labels)):
            means.setdefault(int(s.labels[k]), []).append(s.image[s.masks[k].numpy()].mean(axis=0))
    spreads = [np.ptp(np.stack(v), axis=0).max() for v in means.values() if len(v) > 1]
    assert spreads and max(spreads) > 5


def test_config_and_subset_table():
    cfg = SceneConfig(num_things=(0, 0), crowd_prob=0.0, void_border_prob=0.0, void_blob_prob=0.0)
    s = generate_scene(np.random.default_rng(0), 40, config=cfg)
    assert not s.panoptic.isthing.any() and (s.panoptic.segment_map > 0).all()
    small = CategoryTable([Category(125, "grass", False, (0, 200, 0)),
                           Category(1, "disc", True, (200, 0, 0))])
    s = generate_scene(np.random.default_rng(1), 40, small)
    s.panoptic.validate(small)
    with pytest.raises(ValueError, match="synthetic_categories"):
        generate_scene(np.random.default_rng(0), 40, CategoryTable([Category(1, "person", True, (1, 2, 3))]))
    with pytest.raises(ValueError, match="too small"):
        generate_scene(np.random.default_rng(0), 8)


def test_generation_speed():
    generate_scene(np.random.default_rng(0), 256)
    start = time.perf_counter()
    for seed in range(5):
        generate_scene(np.random.default_rng(seed), 256)
    per_scene = (time.perf_counter() - start) / 5
    assert per_scene < 0.2, f"{1000 * per_scene:.0f} ms per 256x256 scene (expected ~15 ms)"


def test_split_counts():
    assert split_counts(10, {"train": 0.8, "val": 0.2}) == {"train": 8, "val": 2}
    assert split_counts(7, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 2, "c": 2}
    assert split_counts(3, {"train": 1.0, "val": 0.0}) == {"train": 3, "val": 0}
    with pytest.raises(ValueError):
        split_counts(3, {"train": -1.0})


def test_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 5, 40, seed=7)
    write_synthetic_dataset(tmp_path / "b", 5, 40, seed=7)
    write_synthetic_dataset(tmp_path / "c", 5, 40, seed=8)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert fa.keys() == fc.keys() and fa != fc
    assert set(a) == {"train", "val"}
    assert not [k for k in fa if k.endswith(".tmp") or "/." in k]


def test_dataset_layout_is_coco_panoptic(tmp_path):
    paths = write_synthetic_dataset(tmp_path, 6, (40, 56), seed=1, splits={"train": 2, "val": 1})
    train, val = (json.loads(paths[s].read_text()) for s in ("train", "val"))
    assert len(train["images"]) == 4 and len(val["images"]) == 2
    assert {i["id"] for i in train["images"]}.isdisjoint(i["id"] for i in val["images"])
    assert train["categories"] == TABLE.to_coco()
    for img, ann in zip(train["images"], train["annotations"], strict=True):
        assert ann["image_id"] == img["id"] and (img["height"], img["width"]) == (40, 56)
        rgb = np.asarray(Image.open(tmp_path / "images" / img["file_name"]))
        assert rgb.shape == (40, 56, 3)
        png = Image.open(tmp_path / "panoptic" / ann["file_name"])
        assert png.mode == "RGB"
        ids = rgb2id(np.asarray(png))
        info = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(info)
        for sid, s in info.items():
            assert {"id", "category_id", "iscrowd", "area", "bbox"} <= set(s) and "source" not in s
            assert s["category_id"] in TABLE.dataset_ids
            assert s["area"] == int((ids == sid).sum())
            ys, xs = np.nonzero(ids == sid)
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_scene_i_does_not_depend_on_n(tmp_path):
    write_synthetic_dataset(tmp_path / "a", 2, 32, seed=3, splits={"train": 1})
    write_synthetic_dataset(tmp_path / "b", 4, 32, seed=3, splits={"train": 1})
    for name in ("images/synth_000001.png", "panoptic/synth_000002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cli_synth(tmp_path, capsys):
    out_dir = str(tmp_path / "out")
    assert cli_main(["synth", out_dir, "--n", "4", "--size", "32", "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "ms/scene" in out
    assert len(json.loads((tmp_path / "out" / "panoptic_val.json").read_text())["images"]) == 1
    assert cli_main(["synth", str(tmp_path / "jpg"), "--n", "2", "--size", "32", "--val-fraction", "0",
                     "--image-format", "jpg"]) == 0
    names = sorted(p.name for p in (tmp_path / "jpg").iterdir())
    assert names == ["images", "panoptic", "panoptic_train.json"]
    assert (tmp_path / "jpg" / "images" / "synth_000001.jpg").is_file()
    assert cli_main(["synth", str(tmp_path / "bad"), "--n", "0"]) == 2
    assert cli_main(["synth", str(tmp_path / "bad"), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction" in capsys.readouterr().err
