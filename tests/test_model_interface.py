"""The model interface, the dataset loop with evaluator objects, build_fusion, presets and the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from panoptic.data import CocoPanopticDataset, synthetic_categories, write_synthetic_dataset
from panoptic.engine import evaluate
from panoptic.engine.data import eval_loader
from panoptic.engine.distributed import DistInfo
from panoptic.engine.evaluate import summarize
from panoptic.engine.inference import ImageOutput, inference_on_dataset, single_images
from panoptic.engine.predict import make_fusion
from panoptic.evaluation import PanopticQuality, SemanticIoU
from panoptic.fusion import HeuristicFusion, UPSNetFusion, build_fusion
from panoptic.models import (
    CITYSCAPES,
    COCO,
    MODELS,
    MaskRCNN,
    PanopticModel,
    TrainableModel,
    build_model,
    register_model,
)
from panoptic.models.presets import dataset_preset

TABLE = synthetic_categories()
SMALL = [name for name in MODELS if name.endswith("cpu_small")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoPanopticDataset:
    root = tmp_path_factory.mktemp("loop")
    write_synthetic_dataset(root, 3, 64, seed=3, splits={"val": 3})
    return CocoPanopticDataset(root / "images", root / "panoptic_val.json", root / "panoptic")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("upsnet_cpu_small", TABLE, fpn_channels=8).eval()


@pytest.mark.parametrize("name", SMALL)
def test_every_registered_model_answers_the_interface(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, TABLE, fpn_channels=8).eval()
    assert isinstance(model, PanopticModel)
    parts = model.train_parts()
    assert sorted(parts) == (["detector", "semantic"] if name.startswith("mrcnn") else ["model"])
    assert model.train_panoptic_loss == (name in ("upsnet_cpu_small", "upsnet_cp_cpu_small"))
    x = model.normalize(torch.rand(1, 3, 40, 56))
    out = model.network(x, keep_features=True)
    logits = model.semantic_logits(x)
    assert logits.shape == (1, TABLE.num_classes, 40, 56)
    torch.testing.assert_close(logits, out.semantic_logits[..., :40, :56])
    assert model.predict(x)[0].panoptic.image_size == (40, 56)
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 30.0]])]
    assert model.mask_logits(out.features, boxes, [torch.tensor([0])])[0].shape == (1, 28, 28)
    scores, labels = model.classify_boxes(out.features, boxes)[0]
    assert scores.shape == labels.shape == (1,) and 0 <= int(labels[0]) < TABLE.num_things


def test_mask_rcnn_is_trainable_but_not_panoptic() -> None:
    detector = build_model("mrcnn_psp_cpu_small", TABLE, fpn_channels=8).detector
    assert isinstance(detector, MaskRCNN) and isinstance(detector, TrainableModel)
    assert not isinstance(detector, PanopticModel) and detector.train_parts() == {"model": detector}


def test_engine_evaluate_equals_scoring_each_prediction_by_hand(model, dataset) -> None:
    pq, sem = PanopticQuality(TABLE), SemanticIoU(TABLE.num_classes, names=list(TABLE.names))
    for index in range(len(dataset)):
        image, target = dataset[index]
        pred = model(model.normalize(image[None]))[0]
        pq.update(target.panoptic, pred.panoptic)
        sem.update(pred.semantic_logits.argmax(0), target.semantic)
    assert evaluate(model, dataset, TABLE, batch_size=2) == summarize(pq.compute(), sem.compute())


class _Recorder:
    def __init__(self) -> None:
        self.images: list[ImageOutput] = []

    def process(self, image: ImageOutput) -> None:
        self.images.append(image)

    def evaluate(self, info=None) -> int:
        return len(self.images)


def test_the_loop_feeds_every_image_once_in_order_with_its_valid_region(model, dataset) -> None:
    rec = _Recorder()
    stats = inference_on_dataset(model, dataset, eval_loader(dataset, 2, DistInfo(), 0), [rec], timing_warmup=1)
    assert [im.index for im in rec.images] == [0, 1, 2] and rec.evaluate() == 3
    assert stats.num_images == 3 and stats.input_size == (64, 64)
    assert len(stats.network_ms) == 1  # batches [0, 1] (in the warm-up) and [2]
    assert [im.timed for im in rec.images] == [False, False, True]
    for im in rec.images:
        assert im.semantic_logits.shape == (1, TABLE.num_classes, *im.target.image_size)
        assert im.features is None and not im.resized
        assert im.ground_truth.image_size == im.target.image_size
    rec = _Recorder()
    inference_on_dataset(model, dataset, single_images(dataset, 2), [rec], keep_features=True)
    assert [im.index for im in rec.images] == [0, 1] and not any(im.timed for im in rec.images)
    assert all(v.shape[0] == 1 for im in rec.images for v in im.features.values())


def test_build_fusion_is_the_default_fusion_factory(model) -> None:
    heuristic = build_fusion("heuristic", TABLE, stuff_area_limit=7)
    assert isinstance(heuristic, HeuristicFusion) and heuristic.flavor == "upsnet"
    assert heuristic.stuff_area_limit == 7
    assert build_fusion("heuristic", TABLE, flavor="panopticapi").flavor == "panopticapi"
    assert isinstance(build_fusion("upsnet", TABLE), UPSNetFusion)
    with pytest.raises(ValueError, match="unknown fusion 'nope'"):
        build_fusion("nope", TABLE)
    # predict's --fusion keeps the model's stuff area limit; the builders' defaults come from build_fusion too
    assert make_fusion("heuristic", TABLE, model).stuff_area_limit == model.fusion.stuff_area_limit == 128
    assert make_fusion("model", TABLE, model) is None


def test_dataset_presets_are_frozen_and_found_by_name() -> None:
    assert dataset_preset("coco") is COCO and dataset_preset(CITYSCAPES) is CITYSCAPES
    assert (COCO.stuff_area_limit, COCO.semantic_layers, COCO.gap_context) == (4096, 3, True)
    assert (CITYSCAPES.loss_weights.semantic_roi, CITYSCAPES.loss_weights.panoptic) == (0.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        COCO.stuff_area_limit = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="use one of"):
        dataset_preset("ade")


def test_register_model_refuses_a_second_builder_of_the_same_name() -> None:
    def upsnet_cpu_small(table, pretrained=False):  # same name as a registered builder
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_model(upsnet_cpu_small)
    assert MODELS["upsnet_cpu_small"] is not upsnet_cpu_small
