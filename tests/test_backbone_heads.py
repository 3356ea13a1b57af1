"""Backbone + FPN, semantic head, instance head and PSP model: shapes, initialisation, losses, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, roi_align

from panoptic import Instances
from panoptic.backbone import FPN, BackboneConfig, FPNBackbone, _stage_indices, freeze_batch_norm
from panoptic.heads import (
    InstanceHead,
    InstanceHeadConfig,
    PSPConfig,
    PSPNet,
    SemanticHead,
    SemanticHeadConfig,
)
from panoptic.heads.semantic import box_target_crops, semantic_loss

C_FPN = 16


@pytest.fixture(scope="module")
def backbone() -> FPNBackbone:
    torch.manual_seed(0)
    return FPNBackbone(BackboneConfig(name="resnet18", out_channels=C_FPN, frozen_bn=False))


@pytest.fixture(scope="module")
def feats(backbone: FPNBackbone) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(backbone(torch.randn(2, 3, 64, 64)))


def _gt() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Two images: two objects in the first, one in the second."""
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 34.0], [36.0, 30.0, 60.0, 62.0]]), torch.tensor([[10.0, 10.0, 50.0, 40.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    masks = []
    for bx in boxes:
        m = torch.zeros(len(bx), 64, 64, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(bx.long().tolist()):
            m[i, y1:y2, x1:x2] = True
        masks.append(m)
    return boxes, labels, masks


# ======================================================================================== backbone
def test_fpn_levels_strides_and_channels_come_from_timm(backbone: FPNBackbone) -> None:
    out = backbone(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, stride in backbone.strides.items():
        assert tuple(out[name].shape) == (1, C_FPN, -(-64 // stride), -(-96 // stride))
    assert backbone.in_channels == (64, 128, 256, 512)  # resnet18 feature_info, not hard-coded
    assert torch.equal(out["p6"], out["p5"][..., ::2, ::2])  # max-pool k1 s2


def test_fpn_reads_a_non_resnet_feature_info() -> None:
    bb = FPNBackbone(BackboneConfig(name="mobilenetv3_small_050", out_channels=8, frozen_bn=False, gap_context=False))
    info = bb.body.feature_info
    assert list(bb.in_channels) == [info.channels()[i] for i in _stage_indices(info.reduction(), "m")]
    assert bb(torch.randn(1, 3, 64, 64))["p2"].shape == (1, 8, 16, 16)


def test_stage_selection_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="strides"):
        _stage_indices([16, 16, 16], "vit")
    with pytest.raises(ValueError, match="unknown timm model"):
        FPNBackbone(BackboneConfig(name="no_such_model_xyz"))
    with pytest.raises(ValueError, match="out_channels"):
        BackboneConfig(out_channels=0)
    with pytest.raises(ValueError, match="4 input stages"):
        FPN([8, 8, 8], 8)


def test_frozen_batch_norm_conversion_keeps_the_function() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    for bn in (net[1], net[3][0]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    expected = net.eval()(x)
    frozen = freeze_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 2
    torch.testing.assert_close(frozen.train()(x), expected)  # frozen: same in train mode


def test_backbone_frozen_bn_option_and_gap_context_gradient() -> None:
    bb = FPNBackbone(BackboneConfig(name="resnet18", out_channels=8, frozen_bn=True, gap_context=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    bb(torch.randn(1, 3, 64, 64))["p2"].sum().backward()
    assert bb.fpn.context is not None and bb.fpn.context.weight.grad.abs().sum() > 0  # context reaches P2
    assert FPNBackbone(BackboneConfig(name="resnet18", out_channels=8, gap_context=False)).fpn.context is None


def test_normalize_uses_timm_statistics(backbone: FPNBackbone) -> None:
    x = backbone.pixel_mean[None, :, None, None].expand(1, 3, 2, 2)
    assert backbone.normalize(x).abs().max() < 1e-6


# =================================================================================== semantic head
@pytest.mark.parametrize("layers,widths", [(2, [16, 8, 8]), (3, [16, 12, 8, 8])])
def test_semantic_head_shapes_widths_and_init(feats: dict[str, torch.Tensor], layers: int, widths: list[int]) -> None:
    cfg = SemanticHeadConfig(num_layers=layers, hidden_channels=12 if layers == 3 else None, out_channels=8)
    head = SemanticHead(in_channels=C_FPN, num_classes=5, config=cfg)
    got = [head.subnet[0].conv.in_channels] + [layer.conv.out_channels for layer in head.subnet]
    assert got == widths  # reduction at the second-to-last layer
    for layer in head.subnet:
        assert layer.offset is not None and not layer.offset.weight.any()  # zero-initialised offsets
    assert 0.005 < head.classifier.weight.std() < 0.02 and not head.classifier.bias.any()
    out = head(feats)
    assert tuple(out.logits.shape) == (2, 5, 16, 16)
    assert tuple(out.feature.shape) == (2, 32, 16, 16)


def test_semantic_losses_finite_ignore_and_resolution() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 16, 16, requires_grad=True)
    target = torch.randint(0, 5, (2, 64, 64))
    target[:, :8] = 255
    full = semantic_loss(logits, target)
    quarter = semantic_loss(logits, target, at_input_resolution=False)
    assert torch.isfinite(full) and torch.isfinite(quarter) and full.item() != quarter.item()
    manual = F.cross_entropy(F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False), target,
                             ignore_index=255)
    torch.testing.assert_close(full, manual)  # mean over valid pixels
    empty = semantic_loss(logits, torch.full((2, 64, 64), 255))
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="outside"):
        semantic_loss(logits, torch.full((2, 64, 64), 7))


def test_roi_loss_equals_pooling_the_feature_then_classifying(feats: dict[str, torch.Tensor]) -> None:
    head = SemanticHead(in_channels=C_FPN, num_classes=5,
                        config=SemanticHeadConfig(num_layers=2, out_channels=8, deformable=False))
    out = head(feats)
    boxes, _, _ = _gt()
    via_feature = head.classifier(roi_align(out.feature, boxes, 28, spatial_scale=0.25, sampling_ratio=2,
                                            aligned=True))
    torch.testing.assert_close(head.roi_logits(out.logits, boxes), via_feature, rtol=1e-4, atol=1e-5)
    target = torch.randint(0, 5, (2, 64, 64))
    loss = head.roi_loss(out.logits, boxes, target)
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="logits"):
        head.roi_loss(out.feature, boxes, target)


def test_box_target_crops_is_crop_then_nearest_resize() -> None:
    target = torch.arange(40 * 50).reshape(40, 50)
    box = torch.tensor([[3.0, 5.0, 31.0, 19.0]])
    crop = target[5:19, 3:31]
    rows = ((torch.arange(7) + 0.5) * 14 / 7).floor().long()
    cols = ((torch.arange(7) + 0.5) * 28 / 7).floor().long()
    assert torch.equal(box_target_crops(target, box, 7)[0], crop[rows][:, cols])
    assert box_target_crops(target, torch.zeros(0, 4), 7).shape == (0, 7, 7)


def test_semantic_config_errors() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        SemanticHeadConfig(num_layers=1)
    with pytest.raises(ValueError, match="missing"):
        SemanticHead(in_channels=4, num_classes=2)({"p2": torch.zeros(1, 4, 4, 4)})


# =================================================================================== instance head
@pytest.fixture(scope="module")
def instance_head() -> InstanceHead:
    torch.manual_seed(0)
    return InstanceHead(in_channels=C_FPN, num_things=3, config=InstanceHeadConfig.light(box_head_dim=64,
                                                                                         mask_head_dim=16))


def test_instance_losses_named_finite_and_reach_features(instance_head: InstanceHead,
                                                         backbone: FPNBackbone) -> None:
    instance_head.train()
    images = torch.randn(2, 3, 64, 64)
    feats = backbone(images)
    boxes, labels, masks = _gt()
    losses = instance_head.losses(images, feats, boxes, labels, masks)
    assert list(losses) == ["rpn_objectness", "rpn_box", "box_cls", "box_reg", "mask"]
    for name, loss in losses.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, list(feats.values()), retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name} does not reach the FPN"


def test_mask_logits_select_the_class_channel_and_are_differentiable(instance_head: InstanceHead,
                                                                     feats: dict[str, torch.Tensor]) -> None:
    f = {k: v.clone().requires_grad_() for k, v in feats.items()}
    boxes, labels, _ = _gt()
    out = instance_head.mask_logits(f, boxes, labels)
    assert [tuple(o.shape) for o in out] == [(2, 28, 28), (1, 28, 28)]
    rh = instance_head.roi_heads
    full = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(f, boxes, [(64, 64)] * 2)))
    torch.testing.assert_close(out[0][1], full[1, labels[0][1] + 1])  # thing index t -> detector class t + 1
    (out[0].sum() + out[1].sum()).backward()
    assert f["p2"].grad is not None and f["p2"].grad.abs().sum() > 0
    assert instance_head.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    empty = instance_head.mask_logits(f, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert [tuple(e.shape) for e in empty] == [(0, 28, 28)] * 2
    with pytest.raises(ValueError, match="thing indices"):
        instance_head.mask_logits(f, boxes, [torch.tensor([0, 3]), torch.tensor([1])])


def test_detect_returns_valid_instances_with_logits(instance_head: InstanceHead,
                                                    feats: dict[str, torch.Tensor]) -> None:
    instance_head.eval()
    with torch.no_grad():
        dets = instance_head.detect(torch.zeros(2, 3, 64, 64), feats, [(64, 64), (50, 40)])
    assert len(dets) == 2
    for inst, (h, w) in zip(dets, [(64, 64), (50, 40)]):
        assert isinstance(inst, Instances) and 0 < len(inst) <= 30
        inst.validate(num_things=3)
        assert (inst.scores > 0.05).all() and (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.mask_logits.shape[1:] == (28, 28)
        assert inst.boxes[:, 2].max() <= w and inst.boxes[:, 3].max() <= h  # clipped to the valid size
    assert (torch.cat([d.mask_logits for d in dets]) < 0).any()  # logits, not probabilities


def test_instance_head_input_errors(instance_head: InstanceHead, feats: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="anchor_sizes"):
        InstanceHead(in_channels=8, num_things=2, config=InstanceHeadConfig(anchor_sizes=(32, 64)))
    with pytest.raises(ValueError, match="positive"):
        InstanceHeadConfig(detections_per_image=0)
    instance_head.train()
    boxes, labels, masks = _gt()
    with pytest.raises(ValueError, match="thing indices"):
        instance_head.losses(torch.zeros(2, 3, 64, 64), feats, boxes, [torch.tensor([0, 5]), labels[1]], masks)
    instance_head.eval()
    with pytest.raises(ValueError, match="training mode"):
        instance_head.losses(torch.zeros(2, 3, 64, 64), feats, boxes, labels, masks)


# ========================================================================================= PSPNet
def test_psp_dilated_logits_loss_and_gradient() -> None:
    torch.manual_seed(0)
    net = PSPNet(num_classes=5, config=PSPConfig(backbone="resnet18", head_channels=16))
    assert net.feature_stride == 8  # dilated through timm's output_stride
    images = torch.randn(2, 3, 32, 40)
    target = torch.randint(0, 5, (2, 32, 40))
    net.train()
    losses = net(images, target)
    assert list(losses) == ["semantic"] and torch.isfinite(losses["semantic"])
    losses["semantic"].backward()
    assert net.body.conv1.weight.grad.abs().sum() > 0
    net.eval()
    assert tuple(net(images).shape) == (2, 5, 32, 40)
    with pytest.raises(ValueError, match="output_stride"):
        PSPConfig(output_stride=4)


@pytest.mark.parametrize(("b", "cin", "cout", "h", "w", "dilation", "scale"), [
    (2, 5, 3, 7, 9, 1, 3.0),   # offsets reaching outside the image
    (1, 4, 2, 1, 6, 1, 2.0),   # a single row
    (1, 3, 4, 5, 1, 2, 4.0),   # a single column, dilated
    (1, 8, 8, 12, 12, 1, 0.0),  # zero offsets (the initialisation): a plain convolution
])
def test_sampled_deform_conv_equals_torchvision(b, cin, cout, h, w, dilation, scale) -> None:
    """The CPU path of the semantic head: same values and gradients as torchvision's deform_conv2d."""
    from torchvision.ops import deform_conv2d

    from panoptic.heads._deform import deform_conv2d_sampled

    g = torch.Generator().manual_seed(b * 100 + h)
    x = torch.randn(b, cin, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    off = (torch.randn(b, 18, h, w, dtype=torch.float64, generator=g) * scale).requires_grad_()
    wt = torch.randn(cout, cin, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(cout, dtype=torch.float64, generator=g)
    ref = deform_conv2d(x, off, wt, bias, padding=dilation, dilation=dilation)
    ours = deform_conv2d_sampled(x, off, wt, bias, padding=dilation, dilation=dilation)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    for a, r in zip(torch.autograd.grad(ours.square().sum(), (x, off, wt)),
                    torch.autograd.grad(ref.square().sum(), (x, off, wt))):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    if scale == 0.0:
        torch.testing.assert_close(ours, F.conv2d(x, wt, bias, padding=dilation, dilation=dilation), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d_sampled(x, off[:, :4], wt)


def test_semantic_head_cpu_deform_path_matches_torchvision(feats: dict[str, torch.Tensor]) -> None:
    from torchvision.ops import deform_conv2d

    import panoptic.heads.semantic as semantic_module

    torch.manual_seed(0)
    head = SemanticHead(in_channels=C_FPN, num_classes=5, config=SemanticHeadConfig(num_layers=2, out_channels=8))
    for m in head.modules():  # non-zero offsets, so the sampling really moves
        if isinstance(m, nn.Conv2d) and m.out_channels == 18:
            nn.init.normal_(m.weight, std=0.1)
    with torch.no_grad():
        ours = head(feats).logits
        original = semantic_module.deform_conv2d_sampled
        try:
            semantic_module.deform_conv2d_sampled = lambda x, o, w, b, padding: deform_conv2d(x, o, w, b,
                                                                                              padding=padding)
            ref = head(feats).logits
        finally:
            semantic_module.deform_conv2d_sampled = original
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
