"""``panoptic predict`` and the Python prediction API: outputs on disk, multi-scale + flip test, fusion choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic.data import generate_scene
from panoptic.engine import TrainConfig, load_checkpoint, predict_images, train
from panoptic.engine.cli import main
from panoptic.engine.predict import collect_images, make_fusion, predict_image
from panoptic.formats import rgb2id
from panoptic.fusion import HeuristicFusion, UPSNetFusion


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint after 2 training iterations on the tiny synthetic data."""
    root = tmp_path_factory.mktemp("pred")
    cfg = TrainConfig.from_dict({
        "iterations": 2, "batch_size": 2, "eval_at_end": False, "eval_every": 0, "checkpoint_every": 0,
        "progress": False, "threads": 1, "out_dir": str(root / "run"), "model_kwargs": {"fpn_channels": 16},
        "data": {"synthetic_n": 6, "synthetic_size": 64, "cache_dir": str(root / "cache")}})
    return train(cfg).checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two unannotated images of different sizes (one JPEG) and a non-image file."""
    d = tmp_path_factory.mktemp("images")
    for k, (size, ext) in enumerate((((64, 64), "png"), ((48, 80), "jpg"))):
        Image.fromarray(generate_scene(np.random.default_rng(k + 50), size).image).save(d / f"img{k}.{ext}")
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_cli_writes_coco_png_json_and_overlay(trained, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert "wrote 2 predictions" in capsys.readouterr().out
    coco = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in coco["annotations"]] == ["img0", "img1"]
    assert [im["file_name"] for im in coco["images"]] == ["img0.png", "img1.jpg"]
    assert len(coco["categories"]) == 8
    for ann, hw in zip(coco["annotations"], ((64, 64), (48, 80))):
        ids = rgb2id(np.array(Image.open(out / "panoptic" / ann["file_name"])))
        assert ids.shape == hw
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        per_image = json.loads((out / "segments" / f"{ann['image_id']}.json").read_text())
        assert per_image["segments_info"] == ann["segments_info"] and (per_image["height"], per_image["width"]) == hw
        # Small images are enlarged by an integer factor for legible labels; the legend strip goes below.
        w, h = Image.open(out / "overlay" / f"{ann['image_id']}.png").size
        k = w // hw[1]
        assert k >= 1 and w == k * hw[1] and h > k * hw[0]


def test_multiscale_flip_test_and_fusion_choice(trained, images, tmp_path):
    model, table, _ = load_checkpoint(trained)
    image = torch.from_numpy(np.array(Image.open(images / "img1.jpg"))).permute(2, 0, 1).float() / 255
    x = model.normalize(image[None])
    base = model(x)[0]
    assert torch.allclose(model.semantic_logits(x)[0], base.semantic_logits, atol=1e-5)
    assert predict_image(model, image).equal(base.panoptic)
    res = predict_image(model, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert res.image_size == (48, 80)
    res.validate(table)
    small = predict_image(model, image, short_side=32)
    assert small.image_size == (48, 80)
    assert isinstance(make_fusion("heuristic", table, model), HeuristicFusion)
    assert isinstance(make_fusion("upsnet", table, model), UPSNetFusion)
    assert make_fusion("model", table, model) is None
    outs = predict_images(model, table, [images / "img0.png", images / "img0.png"], fusion="heuristic", flip=True,
                          out_dir=tmp_path / "o", write_overlay=False)
    assert [o.image_id for o in outs] == ["img0", "img0_1"] and "overlay" not in outs[0].files


class RecordingFusion:
    """Calls a fusion and keeps the semantic logits it was given."""

    def __init__(self, fusion):
        self.fusion, self.logits = fusion, None

    def __call__(self, semantic_logits, instances):
        self.logits = semantic_logits
        return self.fusion(semantic_logits, instances)


def test_multiscale_flip_averages_the_semantic_logits_of_every_scale_and_flip(trained, images):
    model, table, _ = load_checkpoint(trained)
    image = torch.from_numpy(np.array(Image.open(images / "img1.jpg"))).permute(2, 0, 1).float() / 255
    x = model.normalize(image[None])
    fusion = RecordingFusion(UPSNetFusion(table, stuff_area_limit=128))
    predict_image(model, image, scales=(1.0, 0.5), flip=True, fusion=fusion)
    half = torch.nn.functional.interpolate(x, size=(24, 40), mode="bilinear", align_corners=False)

    def up(t):
        return torch.nn.functional.interpolate(t, size=(48, 80), mode="bilinear", align_corners=False)

    expected = (model.semantic_logits(x) + model.semantic_logits(x.flip(-1)).flip(-1)
                + up(model.semantic_logits(half)) + up(model.semantic_logits(half.flip(-1)).flip(-1))) / 4
    assert torch.allclose(fusion.logits, expected, atol=1e-5)


def test_predict_input_errors(trained, images, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_images([tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="no images"):
        collect_images([tmp_path])
    assert main(["predict", str(images / "notes.txt"), "--checkpoint", str(trained), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    # A bad file after a good one: the error comes before any output is written.
    out = tmp_path / "mixed"
    assert main(["predict", str(images / "img0.png"), str(images / "notes.txt"), "--checkpoint", str(trained),
                 "--out", str(out)]) == 2
    assert "remove or replace" in capsys.readouterr().err and not out.exists()


def test_predict_images_of_a_coco_json_keep_their_ids_and_evaluate_directly(trained, tmp_path, capsys):
    from panoptic.data import write_synthetic_dataset
    from panoptic.evaluation import pq_compute

    data = tmp_path / "data"
    gt_json = write_synthetic_dataset(data, n=8, size=64, seed=4)["val"]
    gt = json.loads(gt_json.read_text())
    image_root = data / "images"
    out = tmp_path / "pred"
    assert main(["predict", "--images-json", str(gt_json), "--image-root", str(image_root), "--checkpoint",
                 str(trained), "--out", str(out), "--no-overlay"]) == 0
    assert f"wrote {len(gt['images'])} predictions" in capsys.readouterr().out
    pred = json.loads((out / "panoptic.json").read_text())
    assert [a["image_id"] for a in pred["annotations"]] == [im["id"] for im in gt["images"]]
    result = pq_compute(gt_json, out / "panoptic.json", data / "panoptic", out / "panoptic", workers=1)
    assert 0.0 <= result["All"]["pq"] <= 1.0
    # Bad uses name the fix.
    assert main(["predict", "--images-json", str(gt_json), "--checkpoint", str(trained), "--out", str(out)]) == 2
    assert "--image-root" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(trained), "--out", str(out)]) == 2
    assert "--images-json" in capsys.readouterr().err
    assert main(["predict", "--images-json", str(gt_json), "--image-root", str(tmp_path), "--checkpoint",
                 str(trained), "--out", str(out)]) == 2
    assert "missing under" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    assert main(["predict", "--images-json", str(tmp_path / "bad.json"), "--image-root", str(image_root),
                 "--checkpoint", str(trained), "--out", str(out)]) == 2
    assert "no 'images' list" in capsys.readouterr().err
