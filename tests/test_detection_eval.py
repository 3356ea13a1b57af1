"""DetectionAP: box and mask AP through pycocotools on tiny hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from panoptic import CategoryTable, Instances
from panoptic.evaluation import DetectionAP

TABLE = CategoryTable.from_coco([
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 20, "name": "person", "isthing": 1},
    {"id": 30, "name": "car", "isthing": 1},
])
H, W = 32, 40


def _gt():
    boxes = torch.tensor([[2.0, 3.0, 10.0, 12.0], [20.0, 5.0, 35.0, 25.0]])
    labels = torch.tensor([0, 1])
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 3:13, 2:11] = True  # the paste box of [2, 3, 10, 12]: rows 3..12, cols 2..10 inclusive
    masks[1, 5:26, 20:36] = True
    return boxes, labels, masks


def test_perfect_roi_and_image_masks_give_ap_one(capsys):
    boxes, labels, masks = _gt()
    ap = DetectionAP(TABLE)
    roi = Instances(boxes.clone(), torch.tensor([0.9, 0.8]), labels.clone(), torch.full((2, 28, 28), 5.0))
    ap.update(roi, boxes, labels, masks)
    img = Instances(boxes.clone(), torch.tensor([0.9, 0.8]), labels.clone(),
                    torch.where(masks, 4.0, -4.0), mask_space="image")
    ap.update(img, boxes, labels, masks)
    r = ap.compute()
    assert r["AP_box"] == pytest.approx(1.0) and r["AP_mask"] == pytest.approx(1.0)
    assert r["AP50_mask"] == pytest.approx(1.0)
    assert r["per_class_box"]["person"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""  # pycocotools' printing is suppressed


def test_wrong_class_and_missing_detections():
    boxes, labels, masks = _gt()
    ap = DetectionAP(TABLE)
    wrong = Instances(boxes.clone(), torch.tensor([0.9, 0.8]), torch.tensor([1, 0]), torch.full((2, 28, 28), 5.0))
    ap.update(wrong, boxes, labels, masks)
    r = ap.compute()
    assert r["AP_box"] == 0.0 and r["AP_mask"] == 0.0
    empty = DetectionAP(TABLE)
    empty.update(Instances.empty(), boxes, labels, masks)
    r = empty.compute()
    assert r["AP_box"] == 0.0 and r["AP_mask"] == 0.0
    assert math.isnan(DetectionAP(TABLE).compute()["AP_box"])


def test_half_the_objects_found():
    boxes, labels, _ = _gt()
    ap = DetectionAP(TABLE, iou_types=("bbox",))
    ap.update(Instances(boxes[:1].clone(), torch.tensor([0.9]), labels[:1].clone(), torch.ones(1, 28, 28)),
              boxes, labels, None, image_size=(H, W))
    r = ap.compute()
    assert r["per_class_box"]["person"] == pytest.approx(1.0)
    assert r["per_class_box"]["car"] == 0.0
    assert r["AP_box"] == pytest.approx(0.5)
    assert "AP_mask" not in r


def test_box_only_gt_gives_nan_mask_ap_and_bad_input_errors():
    boxes, labels, _ = _gt()
    ap = DetectionAP(TABLE)
    pred = Instances(boxes.clone(), torch.tensor([0.9, 0.8]), labels.clone(), torch.ones(2, 28, 28))
    ap.update(pred, boxes, labels, image_size=(H, W))
    r = ap.compute()
    assert r["AP_box"] == pytest.approx(1.0) and math.isnan(r["AP_mask"])
    with pytest.raises(ValueError, match="image_size"):
        ap.update(pred, boxes, labels)
    with pytest.raises(ValueError, match="thing indices"):
        ap.update(pred, boxes, torch.tensor([0, 5]), image_size=(H, W))
    with pytest.raises(ValueError, match="iou_types"):
        DetectionAP(TABLE, iou_types=("keypoints",))
