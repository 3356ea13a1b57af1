"""Registered builders: the paper's models (ResNet-50-FPN, reference sizes) and CPU-sized presets of them.

UPSNet-C and UPSNet-CP are model + fusion pairings (trained without / with the panoptic loss, tested with the
``"upsnet"`` :class:`~panoptic.fusion.HeuristicFusion`), not classes. Default fusions come from
:func:`~panoptic.fusion.build_fusion`.
"""

from __future__ import annotations

from typing import Any

from ..backbone import BackboneConfig, FPNBackbone
from ..categories import CategoryTable
from ..fusion import PanopticFusion, UPSNetFusion, build_fusion
from ..heads.instance import InstanceHead, InstanceHeadConfig
from ..heads.psp import PSPConfig, PSPNet
from ..heads.semantic import SemanticHead, SemanticHeadConfig
from .mrcnn_psp import MRCNNPSP, MaskRCNN
from .presets import COCO, CPU_SMALL, DatasetPreset, dataset_preset
from .registry import register_model
from .types import LossWeights
from .upsnet import UPSNet

SMALL_BACKBONE = "resnet18"
SMALL_FPN_CHANNELS = 64


def _fusions(table: CategoryTable, fusion: PanopticFusion | None, stuff_area_limit: int, heuristic_test: bool,
             train_panoptic_loss: bool) -> tuple[PanopticFusion, UPSNetFusion | None]:
    """``(inference fusion, panoptic head trained by the loss)``, defaults for the missing ones."""
    head = build_fusion("upsnet", table, stuff_area_limit=stuff_area_limit)
    if fusion is None:
        fusion = build_fusion("heuristic", table, stuff_area_limit=stuff_area_limit) if heuristic_test else head
    return fusion, head if train_panoptic_loss else None  # type: ignore[return-value]


def _upsnet(table: CategoryTable, *, backbone: BackboneConfig, semantic: SemanticHeadConfig,
            instance: InstanceHeadConfig, fusion: PanopticFusion | None, stuff_area_limit: int, heuristic_test: bool,
            loss_weights: LossWeights, train_panoptic_loss: bool, seed: int) -> UPSNet:
    bb = FPNBackbone(backbone)
    fusion, head = _fusions(table, fusion, stuff_area_limit, heuristic_test, train_panoptic_loss)
    return UPSNet(backbone=bb,
                  semantic_head=SemanticHead(in_channels=bb.out_channels, num_classes=table.num_classes,
                                             config=semantic),
                  instance_head=InstanceHead(in_channels=bb.out_channels, num_things=table.num_things,
                                             config=instance),
                  fusion=fusion, loss_weights=loss_weights, train_panoptic_loss=train_panoptic_loss,
                  panoptic_head=head, seed=seed)


@register_model
def upsnet_r50_fpn(table: CategoryTable, pretrained: bool = False, *, dataset: DatasetPreset | str = COCO,
                   backbone: str = "resnet50", fusion: PanopticFusion | None = None,
                   loss_weights: LossWeights | None = None, train_panoptic_loss: bool = True,
                   heuristic_test: bool = False, seed: int = 0) -> UPSNet:
    """UPSNet with a ResNet-50-FPN (reference sizes: FPN 256, frozen BN, full Mask R-CNN heads).

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights for the backbone.
        dataset: :data:`~panoptic.models.COCO` (default) or :data:`~panoptic.models.CITYSCAPES`, or its name:
            GAP context, semantic head depth, loss weights and stuff area limit.
        backbone: timm model name.
        fusion: Inference fusion; default :class:`UPSNetFusion` (or :class:`HeuristicFusion` with
            ``heuristic_test``) with the dataset's stuff area limit.
        loss_weights: Override the dataset's loss weights.
        train_panoptic_loss: Train the panoptic loss.
        heuristic_test: Default fusion = ``HeuristicFusion(flavor="upsnet")`` (UPSNet-C / UPSNet-CP).
        seed: Seed of the unknown-instance sampling.
    """
    d = dataset_preset(dataset)
    return _upsnet(table, backbone=BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=True,
                                                  out_channels=256, gap_context=d.gap_context),
                   semantic=SemanticHeadConfig(num_layers=d.semantic_layers), instance=InstanceHeadConfig(),
                   fusion=fusion, stuff_area_limit=d.stuff_area_limit, heuristic_test=heuristic_test,
                   loss_weights=loss_weights or d.loss_weights, train_panoptic_loss=train_panoptic_loss, seed=seed)


@register_model
def upsnet_c(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """UPSNet-C: trained without the panoptic loss, tested with :class:`HeuristicFusion` (``"upsnet"`` flavor).

    Keyword arguments as :func:`upsnet_r50_fpn`.
    """
    kwargs.setdefault("heuristic_test", True)
    return upsnet_r50_fpn(table, pretrained, train_panoptic_loss=False, **kwargs)


@register_model
def upsnet_cp(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """UPSNet-CP: trained with the panoptic loss, tested with :class:`HeuristicFusion` (``"upsnet"`` flavor).

    The same weights as UPSNet: load an UPSNet checkpoint into it. Keyword arguments as :func:`upsnet_r50_fpn`.
    """
    kwargs.setdefault("heuristic_test", True)
    return upsnet_r50_fpn(table, pretrained, train_panoptic_loss=True, **kwargs)


@register_model
def mrcnn_psp(table: CategoryTable, pretrained: bool = False, *, dataset: DatasetPreset | str = COCO,
              backbone: str = "resnet50", fusion: PanopticFusion | None = None) -> MRCNNPSP:
    """MR-CNN-PSP: ResNet-50-FPN Mask R-CNN + dilated ResNet-50 PSPNet, :class:`HeuristicFusion` at test.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights for both backbones.
        dataset: Sets the fusion's stuff area limit (:data:`~panoptic.models.COCO` 4096, Cityscapes 2048).
        backbone: timm model name of both backbones.
        fusion: Inference fusion; default ``HeuristicFusion(flavor="upsnet")``.
    """
    d = dataset_preset(dataset)
    bb = FPNBackbone(BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=True, gap_context=False))
    detector = MaskRCNN(backbone=bb, instance_head=InstanceHead(in_channels=bb.out_channels,
                                                                num_things=table.num_things))
    semantic = PSPNet(num_classes=table.num_classes, config=PSPConfig(backbone=backbone, pretrained=pretrained))
    fusion = fusion or build_fusion("heuristic", table, stuff_area_limit=d.stuff_area_limit)
    return MRCNNPSP(detector=detector, semantic=semantic, fusion=fusion)


# ---------------------------------------------------------------------------------- CPU presets
@register_model
def upsnet_cpu_small(table: CategoryTable, pretrained: bool = False, *, backbone: str = SMALL_BACKBONE,
                     fpn_channels: int = SMALL_FPN_CHANNELS, deformable: bool = False,
                     fusion: PanopticFusion | None = None, loss_weights: LossWeights | None = None,
                     train_panoptic_loss: bool = True, heuristic_test: bool = False,
                     stuff_area_limit: int = CPU_SMALL.stuff_area_limit, seed: int = 0) -> UPSNet:
    """UPSNet sized to train in minutes on 2 CPU cores with 128-256 px images.

    resnet18 (trainable batch norm: no pretrained statistics to freeze), FPN 64 with GAP context, a 2-layer
    semantic head 64 -> 32 -> 32 (plain 3x3 convs by default, the cheapest on a CPU; ``deformable=True`` restores
    UPSNet's deformable ones, which run on the CPU through :mod:`panoptic.heads._deform`), light Mask R-CNN heads
    (:meth:`InstanceHeadConfig.light`), semantic loss at 1/4 resolution.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights.
        backbone: timm model name.
        fpn_channels: FPN width.
        deformable: Deformable convs in the semantic head.
        fusion: Inference fusion; default :class:`UPSNetFusion` (or the ``"upsnet"`` :class:`HeuristicFusion`
            with ``heuristic_test``), stuff area ``stuff_area_limit``.
        loss_weights: Default :data:`~panoptic.models.CPU_SMALL`'s: semantic 1.0, semantic RoI 0.2, panoptic 0.5.
        train_panoptic_loss: Train the panoptic loss.
        heuristic_test: See ``fusion``.
        stuff_area_limit: Stuff area threshold of the default fusions.
        seed: Seed of the unknown-instance sampling.
    """
    p = CPU_SMALL
    return _upsnet(table, backbone=BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=False,
                                                  out_channels=fpn_channels, gap_context=p.gap_context),
                   semantic=SemanticHeadConfig(num_layers=p.semantic_layers, out_channels=max(fpn_channels // 2, 1),
                                               deformable=deformable, loss_at_input_resolution=False),
                   instance=InstanceHeadConfig.light(), fusion=fusion, stuff_area_limit=stuff_area_limit,
                   heuristic_test=heuristic_test, loss_weights=loss_weights or p.loss_weights,
                   train_panoptic_loss=train_panoptic_loss, seed=seed)


@register_model
def upsnet_c_cpu_small(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """:func:`upsnet_cpu_small` trained without the panoptic loss, tested with :class:`HeuristicFusion`."""
    kwargs.setdefault("heuristic_test", True)
    return upsnet_cpu_small(table, pretrained, train_panoptic_loss=False, **kwargs)


@register_model
def upsnet_cp_cpu_small(table: CategoryTable, pretrained: bool = False, **kwargs: Any) -> UPSNet:
    """:func:`upsnet_cpu_small` trained with the panoptic loss, tested with :class:`HeuristicFusion`."""
    kwargs.setdefault("heuristic_test", True)
    return upsnet_cpu_small(table, pretrained, train_panoptic_loss=True, **kwargs)


@register_model
def mrcnn_psp_cpu_small(table: CategoryTable, pretrained: bool = False, *, backbone: str = SMALL_BACKBONE,
                        fpn_channels: int = SMALL_FPN_CHANNELS, psp_output_stride: int = 8,
                        fusion: PanopticFusion | None = None,
                        stuff_area_limit: int = CPU_SMALL.stuff_area_limit) -> MRCNNPSP:
    """MR-CNN-PSP sized like :func:`upsnet_cpu_small`: resnet18 Mask R-CNN (FPN 64, light heads) + resnet18 PSP.

    Args:
        table: Category table.
        pretrained: Load timm's ImageNet weights.
        backbone: timm model name of both parts.
        fpn_channels: FPN width of the detector.
        psp_output_stride: Dilation of the PSP backbone (8 as PSPNet; 16 is ~2x cheaper on CPU).
        fusion: Inference fusion; default ``HeuristicFusion(flavor="upsnet")``.
        stuff_area_limit: Stuff area threshold of the default fusion.
    """
    bb = FPNBackbone(BackboneConfig(name=backbone, pretrained=pretrained, frozen_bn=False,
                                    out_channels=fpn_channels, gap_context=False))
    detector = MaskRCNN(backbone=bb, instance_head=InstanceHead(in_channels=bb.out_channels,
                                                                num_things=table.num_things,
                                                                config=InstanceHeadConfig.light()))
    semantic = PSPNet(num_classes=table.num_classes,
                      config=PSPConfig(backbone=backbone, pretrained=pretrained, output_stride=psp_output_stride,
                                       head_channels=128))
    fusion = fusion or build_fusion("heuristic", table, stuff_area_limit=stuff_area_limit)
    return MRCNNPSP(detector=detector, semantic=semantic, fusion=fusion)
