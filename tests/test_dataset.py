"""CocoPanopticDataset, transforms, collate and the prediction writer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic.data import (
    CocoPanopticDataset,
    CocoPanopticWriter,
    PanopticDataError,
    build_transforms,
    collate,
    generate_scene,
    write_coco_predictions,
    write_synthetic_dataset,
)
from panoptic.data.targets import build_target
from panoptic.data.transforms import PadToMultiple, RandomHorizontalFlip, ResizeShortSide, Sample, resize_panoptic
from panoptic.formats import id2rgb

N, SIZE, SEED = 6, (48, 64), 5


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, N, SIZE, seed=SEED, splits={"train": 1})
    return out


def _dataset(root: Path, **kwargs) -> CocoPanopticDataset:
    return CocoPanopticDataset(root / "images", root / "panoptic_train.json", root / "panoptic", **kwargs)


@pytest.fixture(scope="module")
def ds(root) -> CocoPanopticDataset:
    return _dataset(root)


@pytest.fixture
def broken(root, tmp_path) -> Path:
    """A private copy of the dataset to break."""
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy"


def _edit_json(root: Path, fn) -> None:
    path = root / "panoptic_train.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------- round trip
def test_round_trip_reproduces_the_generator_exactly(ds):
    assert len(ds) == N
    assert ds.table.names == generate_scene(np.random.default_rng(0), 32).table.names
    for i in range(N):
        scene = generate_scene(np.random.default_rng([SEED, i]), SIZE)
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
        assert np.array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), scene.image)
        assert t.panoptic.equal(scene.panoptic)
        assert torch.equal(t.masks, scene.masks) and torch.equal(t.boxes, scene.boxes)
        assert torch.equal(t.labels, scene.labels) and torch.equal(t.segment_ids, scene.segment_ids)
        assert torch.equal(t.semantic, scene.semantic)
        assert t.image_id == i + 1 and t.file_name == f"synth_{i + 1:06d}.png"
        assert t.image_size == t.orig_size == SIZE


def test_target_conventions(ds):
    crowd_seen = False
    for i in range(N):
        _, t = ds[i]
        pan = t.panoptic
        assert t.semantic.dtype == torch.int64 and t.masks.dtype == torch.bool
        assert t.boxes.dtype == torch.float32
        assert torch.equal(t.semantic == 255, pan.segment_map == 0)
        crowd_ids = torch.nonzero(pan.iscrowd).reshape(-1) + 1
        assert torch.equal(t.crowd_mask, torch.isin(pan.segment_map, crowd_ids))
        if t.crowd_mask.any():
            crowd_seen = True
            assert (t.semantic[t.crowd_mask] >= ds.table.num_stuff).all(), "crowd keeps its thing class"
            assert not (t.masks & t.crowd_mask).any(), "crowd is not an instance"
        assert ((t.labels >= 0) & (t.labels < ds.table.num_things)).all()
    assert crowd_seen


# --------------------------------------------------------------------------------- transforms
def _sample(ds, i=0) -> Sample:
    return Sample(ds.load_image(i).float() / 255, ds.load_panoptic(i))


def test_flip_twice_is_identity_and_targets_follow(ds):
    rng = np.random.default_rng(0)
    s = _sample(ds, 1)
    flip = RandomHorizontalFlip(1.0)
    once = flip(s, rng)
    twice = flip(once, rng)
    assert torch.equal(twice.image, s.image) and twice.panoptic.equal(s.panoptic)
    t0, t1 = build_target(s.panoptic, ds.table), build_target(once.panoptic, ds.table)
    w = SIZE[1]
    assert torch.equal(t1.semantic, t0.semantic.flip(-1)) and torch.equal(t1.masks, t0.masks.flip(-1))
    assert torch.equal(t1.crowd_mask, t0.crowd_mask.flip(-1))
    assert torch.equal(t1.boxes, torch.stack([w - t0.boxes[:, 2], t0.boxes[:, 1], w - t0.boxes[:, 0],
                                              t0.boxes[:, 3]], dim=1))
    assert torch.equal(once.image, s.image.flip(-1))
    assert RandomHorizontalFlip(0.0)(s, rng) is s


def test_resize_and_pad_keep_everything_aligned(ds):
    t = build_transforms(short_side=36, max_size=40, size_divisor=32)
    image, target = _dataset(ds.image_root.parent, transforms=t)[2]
    # 48x64 -> short side 36 would make the long side 48 > 40, so the long side is capped at 40: 30x40.
    assert target.image_size == (30, 40) and target.orig_size == SIZE
    assert image.shape == (3, 32, 64) and target.semantic.shape == (32, 64)
    assert target.masks.shape[1:] == (32, 64) and target.crowd_mask.shape == (32, 64)
    assert (image[:, 30:] == 0).all() and (image[:, :, 40:] == 0).all()
    assert (target.semantic[30:] == 255).all() and (target.semantic[:, 40:] == 255).all()
    assert not target.masks[:, 30:].any() and not target.masks[:, :, 40:].any()
    target.panoptic.validate(ds.table)
    # The labels are the nearest-resized originals.
    ref = resize_panoptic(ds.load_panoptic(2), (30, 40)).semantic_map(void=255)
    assert torch.equal(target.semantic[:30, :40], ref)
    if len(target.boxes):
        assert (target.boxes[:, 2] <= 40).all() and (target.boxes[:, 3] <= 30).all()


def test_upscale_keeps_segments_and_image_is_bilinear(ds):
    s = _sample(ds, 0)
    out = ResizeShortSide(96)(s, np.random.default_rng(0))
    assert out.image.shape == (3, 96, 128) and out.panoptic.num_segments == s.panoptic.num_segments
    assert torch.equal(out.panoptic.area, s.panoptic.area * 4)
    out.panoptic.validate(ds.table)


def test_padded_sample_cannot_be_resized_or_flipped(ds):
    padded = PadToMultiple(32)(_sample(ds), np.random.default_rng(0))
    assert padded.padded and padded.image.shape[1:] == (64, 64)
    for t in (ResizeShortSide(32), RandomHorizontalFlip(1.0)):
        with pytest.raises(ValueError, match="PadToMultiple last"):
            t(padded, np.random.default_rng(0))


def test_transforms_are_deterministic_under_a_seed(root):
    t = build_transforms(short_side=[24, 32, 40], flip_prob=0.5, size_divisor=None)
    a, b, c = (_dataset(root, transforms=t, seed=s) for s in (1, 1, 2))
    outs_a = [a[i] for i in range(N)]
    outs_b = [b[i] for i in range(N)]
    outs_c = [c[i] for i in range(N)]
    for (ia, ta), (ib, tb) in zip(outs_a, outs_b, strict=True):
        assert torch.equal(ia, ib) and ta.panoptic.equal(tb.panoptic)
    shapes = {tuple(x.shape) for x, _ in outs_a + outs_c}
    assert len(shapes) > 1, "random short sides should vary"
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], outs_a[i][0]) for i in range(N))


def test_collate_pads_images_and_targets(root):
    ds = _dataset(root, transforms=build_transforms(short_side=[24, 40], size_divisor=None), seed=3)
    batch = [ds[i] for i in range(4)]
    sizes = {tuple(img.shape[1:]) for img, _ in batch}
    assert len(sizes) > 1
    images, targets = collate(batch, size_divisor=32)
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    assert images.shape == (4, 3, hp, wp)
    for k, ((img, t0), t) in enumerate(zip(batch, targets, strict=True)):
        ih, iw = img.shape[1:]
        assert torch.equal(images[k, :, :ih, :iw], img) and (images[k, :, ih:] == 0).all()
        assert t.semantic.shape == (hp, wp) and t.masks.shape == (len(t0.labels), hp, wp)
        assert torch.equal(t.semantic[:ih, :iw], t0.semantic) and (t.semantic[ih:] == 255).all()
        assert t.panoptic.image_size == (hp, wp) and t.image_size == (ih, iw)
        assert torch.equal(t.boxes, t0.boxes)
        t.panoptic.validate(ds.table)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape[0] == 2 and len(targets) == 2


# ------------------------------------------------------------------------------------- writer
def test_prediction_writer_round_trip_and_panopticapi(ds, tmp_path):
    results = [ds[i][1].panoptic for i in range(N)]
    ids = [it.image_id for it in ds.items]
    names = [it.file_name for it in ds.items]
    path = write_coco_predictions(results, ids, ds.table, tmp_path / "pred.json", tmp_path / "pred", names)
    pred = json.loads(path.read_text())
    assert [a["image_id"] for a in pred["annotations"]] == ids
    back = CocoPanopticDataset(ds.image_root, ds.panoptic_json, tmp_path / "pred")
    for i in range(N):
        assert back.load_panoptic(i).equal(results[i], segmentation_only=True)
    if os.environ.get("PANOPTIC_REQUIRE_ORACLE") != "1":
        pytest.importorskip("panopticapi.evaluation")
    from panopticapi.evaluation import pq_compute

    r = pq_compute(str(ds.panoptic_json), str(path), str(ds.panoptic_root), str(tmp_path / "pred"))
    assert r["All"]["pq"] == pytest.approx(1.0)


def test_writer_never_leaves_a_json_pointing_to_missing_pngs(ds, tmp_path):
    def results():
        yield ds[0][1].panoptic
        raise RuntimeError("crash mid-run")

    with pytest.raises(RuntimeError):
        write_coco_predictions(results(), [1, 2], ds.table, tmp_path / "p.json", tmp_path / "png")
    assert not (tmp_path / "p.json").exists()
    assert list((tmp_path / "png").iterdir()) == [], "nothing appears after a failure, no temporary files are left"
    with pytest.raises(ValueError, match="image_ids"):
        write_coco_predictions([ds[0][1].panoptic], [1, 2], ds.table, tmp_path / "q.json", tmp_path / "q")
    assert not (tmp_path / "q.json").exists()
    with pytest.raises(RuntimeError), CocoPanopticWriter(ds.table, tmp_path / "w.json", tmp_path / "w") as w:
        w.add(ds[0][1].panoptic, 1, "a.jpg")
        raise RuntimeError
    assert not (tmp_path / "w.json").exists() and list((tmp_path / "w").iterdir()) == []
    with CocoPanopticWriter(ds.table, tmp_path / "d.json", tmp_path / "d") as w:
        w.add(ds[0][1].panoptic, 1)
        with pytest.raises(ValueError, match="duplicate image_id"):
            w.add(ds[1][1].panoptic, 1)


# ------------------------------------------------------------------------------------ bad data
def _raises(match: str, path: Path | str, fn, *args) -> None:
    with pytest.raises(PanopticDataError, match=match) as info:
        fn(*args)
    assert str(path) in str(info.value), f"the error should name {path}: {info.value}"


def test_missing_or_broken_json(broken):
    _raises("not found", broken / "nope.json", CocoPanopticDataset, broken / "images", broken / "nope.json",
            broken / "panoptic")
    (broken / "panoptic_train.json").write_text("{not json")
    _raises("cannot parse", broken / "panoptic_train.json", _dataset, broken)
    (broken / "panoptic_train.json").write_text(json.dumps({"images": []}))
    _raises("annotations", broken / "panoptic_train.json", _dataset, broken)


def test_bad_categories(broken):
    _edit_json(broken, lambda d: d["categories"][0].pop("isthing"))
    _raises("isthing", broken / "panoptic_train.json", _dataset, broken)


def test_unknown_category_id(broken):
    _edit_json(broken, lambda d: d["annotations"][2]["segments_info"][0].update(category_id=999))
    _raises("unknown category ids \\[999\\]", broken / "panoptic_train.json", _dataset, broken)


def test_duplicate_ids(root, broken):
    def dup_image(d):
        d["images"][1]["id"] = d["images"][0]["id"]

    def dup_segment(d):
        info = d["annotations"][0]["segments_info"]
        info[1]["id"] = info[0]["id"]

    def dup_png(d):
        d["annotations"][1]["file_name"] = d["annotations"][0]["file_name"]

    for edit, match in ((dup_image, "duplicate image id"), (dup_segment, "duplicate segment ids"),
                        (dup_png, "share PNG file names")):
        shutil.copy(root / "panoptic_train.json", broken / "panoptic_train.json")
        _edit_json(broken, edit)
        _raises(match, broken / "panoptic_train.json", _dataset, broken)


def test_missing_files(broken):
    (broken / "panoptic" / "synth_000003.png").unlink()
    _raises("missing", broken / "panoptic" / "synth_000003.png", _dataset, broken)
    shutil.copy(broken / "panoptic" / "synth_000001.png", broken / "panoptic" / "synth_000003.png")
    (broken / "images" / "synth_000004.png").unlink()
    _raises("missing", broken / "images" / "synth_000004.png", _dataset, broken)


def test_png_id_missing_from_segments_info(broken):
    _edit_json(broken, lambda d: d["annotations"][1]["segments_info"].pop())
    ds = _dataset(broken)  # construction only runs the fast checks
    png = broken / "panoptic" / "synth_000002.png"
    _raises("not in segments_info", png, ds.__getitem__, 1)
    _raises("not in segments_info", png, ds.validate, True)


def test_image_and_png_size_mismatch(broken):
    img = broken / "images" / "synth_000002.png"
    Image.open(img).resize((SIZE[1] + 2, SIZE[0])).save(img)
    ds = _dataset(broken)
    _raises("same size", img, ds.__getitem__, 1)
    _raises("same size", img, ds.validate, True)
    _edit_json(broken, lambda d: d["images"][3].update(height=10))
    _raises("says 10x64", broken / "panoptic" / "synth_000004.png", _dataset(broken).__getitem__, 3)


def test_corrupt_and_non_rgb_png(broken):
    png = broken / "panoptic" / "synth_000001.png"
    png.write_bytes(png.read_bytes()[:60])
    ds = _dataset(broken)
    _raises("corrupt", png, ds.__getitem__, 0)
    gray = broken / "panoptic" / "synth_000002.png"
    Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(gray)
    _raises("mode 'L'", gray, ds.__getitem__, 1)
    img = broken / "images" / "synth_000003.png"
    img.write_bytes(b"not an image")
    _raises("cannot read the image", img, ds.__getitem__, 2)


def test_recursive_image_lookup(broken):
    nested = broken / "images" / "city"
    nested.mkdir()
    for p in sorted((broken / "images").glob("*.png"))[:3]:
        p.rename(nested / p.name)
    with pytest.raises(PanopticDataError, match="recursive_images=True"):
        _dataset(broken)
    ds = _dataset(broken, recursive_images=True)
    assert ds.items[0].image_path == nested / "synth_000001.png"
    assert ds[0][0].shape == (3, *SIZE)


def test_segments_info_order_defines_segment_order(tmp_path):
    # A hand-made 2x3 COCO-panoptic image: ids 5 (stuff) and 9 (crowd thing); void in one pixel.
    ids = np.array([[5, 5, 9], [0, 9, 9]])
    (tmp_path / "pan").mkdir()
    (tmp_path / "img").mkdir()
    Image.fromarray(id2rgb(ids)).save(tmp_path / "pan" / "a.png")
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 2, "width": 3}],
            "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
                {"id": 9, "category_id": 1, "iscrowd": 1}, {"id": 5, "category_id": 20, "iscrowd": 0}]}],
            "categories": [{"id": 1, "name": "a", "isthing": 1}, {"id": 20, "name": "b", "isthing": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    _, t = CocoPanopticDataset(tmp_path / "img", tmp_path / "gt.json", tmp_path / "pan")[0]
    assert t.semantic.tolist() == [[0, 0, 1], [255, 1, 1]]
    assert t.crowd_mask.tolist() == [[False, False, True], [False, True, True]]
    assert t.masks.shape == (0, 2, 3) and t.boxes.shape == (0, 4) and t.labels.shape == (0,)
    assert t.panoptic.segment_map.tolist() == [[2, 2, 1], [0, 1, 1]]
