"""UPSNet and MR-CNN-PSP: the eight losses, gradients, inference results, variants, builders, input errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from panoptic import HeuristicFusion, UPSNetFusion
from panoptic.data import collate, generate_scene, synthetic_categories
from panoptic.data.targets import build_target
from panoptic.models import (
    CITYSCAPES,
    COCO,
    MODELS,
    MRCNNPSP,
    LossWeights,
    PanopticPrediction,
    UPSNet,
    build_model,
)
from panoptic.models._builders import (
    mrcnn_psp_cpu_small,
    upsnet_c,
    upsnet_c_cpu_small,
    upsnet_cp_cpu_small,
    upsnet_cpu_small,
    upsnet_r50_fpn,
)
from panoptic.models.types import UPSNET_LOSSES

TABLE = synthetic_categories()
TINY = {"fpn_channels": 16}


def _batch(size: tuple[int, int] = (64, 64), n: int = 2, seed: int = 0):
    items = []
    for i in range(n):
        scene = generate_scene(np.random.default_rng(seed + i), size)
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
        items.append((image, build_target(scene.panoptic, TABLE)))
    images, targets = collate(items)
    assert all(len(t.boxes) for t in targets)
    return images, targets


@pytest.fixture(scope="module")
def batch():
    return _batch()


@pytest.fixture(scope="module")
def model() -> UPSNet:
    torch.manual_seed(0)
    return upsnet_cpu_small(TABLE, **TINY)


def _losses(model: UPSNet, images: torch.Tensor, targets, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model.generator.manual_seed(seed)
    return model.train()(model.backbone.normalize(images), targets)


def test_training_returns_the_eight_finite_losses_and_each_reaches_the_backbone(model: UPSNet, batch) -> None:
    model.loss_weights = LossWeights()
    losses = _losses(model, *batch)
    assert tuple(losses) == UPSNET_LOSSES
    body = [p for p in model.backbone.body.parameters() if p.requires_grad]
    mask_head = list(model.instance_head.roi_heads.mask_head.parameters())
    for name, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, body, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name} does not reach the backbone"
    grads = torch.autograd.grad(losses["panoptic"], mask_head, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "panoptic loss does not reach the mask head"


def test_losses_are_weighted_by_the_presets(model: UPSNet, batch) -> None:
    model.loss_weights = LossWeights()
    with torch.no_grad():
        plain = _losses(model, *batch)
        model.loss_weights = COCO.loss_weights
        coco = _losses(model, *batch)
        model.loss_weights = CITYSCAPES.loss_weights
        city = _losses(model, *batch)
    model.loss_weights = LossWeights()
    for name, w in COCO.loss_weights.as_dict().items():
        torch.testing.assert_close(coco[name], plain[name] * w)
    assert "semantic_roi" not in city  # weight 0: skipped
    torch.testing.assert_close(city["panoptic"], plain["panoptic"] * 0.5)
    assert COCO.loss_weights.semantic == 0.2 and COCO.loss_weights.semantic_roi == 0.04
    assert COCO.loss_weights.panoptic == 0.1 and CITYSCAPES.loss_weights.semantic == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        LossWeights(mask=-1.0)


def test_images_without_instances_and_unpadded_sizes_train(model: UPSNet) -> None:
    images, targets = _batch((60, 52))
    empty = targets[1]
    targets = [targets[0], replace(empty, boxes=empty.boxes[:0], labels=empty.labels[:0], masks=empty.masks[:0])]
    losses = _losses(model, images, targets)
    assert tuple(losses) == UPSNET_LOSSES and all(torch.isfinite(v) for v in losses.values())


def test_inference_returns_validated_predictions_cropped_to_image_sizes(model: UPSNet, batch) -> None:
    images, _ = batch
    model.eval()
    preds = model(model.backbone.normalize(images), image_sizes=[(64, 64), (50, 60)])
    assert len(preds) == 2
    for pred, size in zip(preds, [(64, 64), (50, 60)]):
        assert isinstance(pred, PanopticPrediction)
        assert tuple(pred.semantic_logits.shape) == (TABLE.num_classes, *size)
        pred.instances.validate(TABLE.num_things, size)
        assert pred.instances.mask_logits.shape[1:] == (28, 28)
        assert pred.panoptic.image_size == size
        pred.panoptic.validate(TABLE)
    odd = model(model.backbone.normalize(images[:, :, :45, :37]))  # padded inside, cropped back
    assert odd[0].panoptic.image_size == (45, 37)


def test_upsnet_c_has_no_panoptic_loss_and_tests_with_the_heuristic(batch) -> None:
    torch.manual_seed(0)
    c = upsnet_c_cpu_small(TABLE, **TINY)
    assert not c.train_panoptic_loss and c.panoptic_head is None and isinstance(c.fusion, HeuristicFusion)
    losses = _losses(c, *batch)
    assert tuple(losses) == tuple(n for n in UPSNET_LOSSES if n != "panoptic")
    cp = upsnet_cp_cpu_small(TABLE, **TINY)
    assert cp.train_panoptic_loss and isinstance(cp.fusion, HeuristicFusion)
    assert isinstance(cp.panoptic_head, UPSNetFusion)
    c.eval()
    for pred in c(c.backbone.normalize(batch[0])):
        pred.panoptic.validate(TABLE)


def test_mrcnn_psp_parts_train_separately_and_fuse(batch) -> None:
    torch.manual_seed(0)
    model = mrcnn_psp_cpu_small(TABLE, **TINY)
    assert isinstance(model, MRCNNPSP) and isinstance(model.fusion, HeuristicFusion)
    images, targets = batch
    x = model.detector.backbone.normalize(images)
    model.train()
    det = model.detector(x, targets)
    sem = model.semantic(x, targets)
    assert tuple(det) == ("rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask") and tuple(sem) == ("semantic",)
    assert all(torch.isfinite(v) for v in [*det.values(), *sem.values()])
    sem["semantic"].backward()
    assert model.semantic.body.conv1.weight.grad is not None and model.detector.backbone.body.conv1.weight.grad is None
    assert set(model(x, targets)) == {*det, *sem}
    model.eval()
    for pred, size in zip(model(x, image_sizes=[(64, 64), (40, 48)]), [(64, 64), (40, 48)]):
        assert tuple(pred.semantic_logits.shape) == (TABLE.num_classes, *size)
        pred.instances.validate(TABLE.num_things, size)
        pred.panoptic.validate(TABLE)


def test_reference_builders_follow_the_dataset_presets() -> None:
    coco = upsnet_c(TABLE)
    assert coco.backbone.config.name == "resnet50" and coco.backbone.config.gap_context
    assert coco.backbone.out_channels == 256 and coco.backbone.in_channels[-1] == 2048
    assert len(coco.semantic_head.subnet) == 3 and coco.semantic_head.config.deformable
    assert coco.loss_weights == COCO.loss_weights and not coco.train_panoptic_loss
    assert isinstance(coco.fusion, HeuristicFusion)
    city = upsnet_r50_fpn(TABLE, dataset=CITYSCAPES, backbone="resnet18")
    assert not city.backbone.config.gap_context and len(city.semantic_head.subnet) == 2
    assert city.loss_weights == CITYSCAPES.loss_weights and isinstance(city.fusion, UPSNetFusion)
    assert city.fusion.stuff_area_limit == 2048
    assert set(MODELS) >= {"upsnet_r50_fpn", "upsnet_c", "upsnet_cp", "mrcnn_psp", "upsnet_cpu_small",
                           "mrcnn_psp_cpu_small"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", TABLE)
    by_name = upsnet_r50_fpn(TABLE, dataset="cityscapes", backbone="resnet18")  # names, as configs store them
    assert by_name.loss_weights == city.loss_weights and by_name.fusion.stuff_area_limit == 2048
    with pytest.raises(ValueError, match="dataset preset"):
        upsnet_r50_fpn(TABLE, dataset="ade")


def test_input_errors_name_the_fix(model: UPSNet, batch) -> None:
    images, targets = batch
    other = synthetic_categories().from_coco([{"id": 1, "isthing": 0}, {"id": 2, "isthing": 1}])
    with pytest.raises(ValueError, match="category table"):
        UPSNet(backbone=model.backbone, semantic_head=model.semantic_head, instance_head=model.instance_head,
               fusion=UPSNetFusion(other))
    with pytest.raises(ValueError, match="UPSNetFusion"):
        UPSNet(backbone=model.backbone, semantic_head=model.semantic_head, instance_head=model.instance_head,
               fusion=HeuristicFusion(TABLE))
    model.train()
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError, match="one target per image"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match="semantic map"):
        model(images[:, :, :32], targets)


def test_upsnet_weights_load_into_the_heuristic_variants_and_the_sampler_state_resumes(model: UPSNet) -> None:
    state = model.state_dict()
    cp = upsnet_cp_cpu_small(TABLE, **TINY)
    cp.load_state_dict(state)  # strict: UPSNet-CP reuses UPSNet's weights
    torch.testing.assert_close(cp.backbone.fpn.output[0].weight, model.backbone.fpn.output[0].weight)
    upsnet_c_cpu_small(TABLE, **TINY).load_state_dict(state)
    expected = torch.randperm(10, generator=model.generator)
    cp.load_state_dict(state)
    assert torch.equal(torch.randperm(10, generator=cp.generator), expected)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model.normalize(x), (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None])
                               / torch.tensor([0.229, 0.224, 0.225])[:, None, None])
