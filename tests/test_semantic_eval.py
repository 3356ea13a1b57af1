"""SemanticIoU: hand-computed confusion matrices, both mIoU conventions, ignore handling, merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic.evaluation import SemanticIoU


def test_hand_computed_iou_and_both_means():
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1], [2, 1, 2, 2], [2, 2, 0, 0]])
    m = SemanticIoU(4, names=["a", "b", "c", "d"])
    m.update(pred, gt)
    r = m.compute()
    # class 0: TP 4, GT 4, Pred 5 -> 4/5; class 1: TP 3, GT 4, Pred 4 -> 3/5; class 2: TP 3, GT 4, Pred 3 -> 3/4.
    # class 3 is absent from both (pixels under GT 255 are ignored, whatever was predicted there).
    assert r["iou"][:3].tolist() == [4 / 5, 3 / 5, 3 / 4]
    assert math.isnan(r["iou"][3])
    assert r["present"].tolist() == [True, True, True, False]
    assert r["miou"] == pytest.approx((4 / 5 + 3 / 5 + 3 / 4) / 3, abs=1e-15)
    assert r["miou_upsnet"] == pytest.approx((4 / 5 + 3 / 5 + 3 / 4 + 0) / 4, abs=1e-15)
    assert r["iou_upsnet"][3] == 0.0
    assert r["pixel_acc"] == 10 / 12
    assert r["per_class"]["b"] == 3 / 5
    assert r["confusion"].sum() == 12 and r["confusion"][0, 0] == 4


def test_no_prediction_pixels_count_as_misses():
    gt = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 255], [1, -1]])
    m = SemanticIoU(2)
    m.update(pred, gt)
    r = m.compute()
    assert r["iou"].tolist() == [0.5, 0.5]  # one of two GT pixels found for each, no false positives
    assert r["pixel_acc"] == 0.5


def test_numpy_inputs_batches_and_merge():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 8, 8))
    pred = rng.integers(0, 5, (3, 8, 8))
    one = SemanticIoU(5)
    one.update(pred, gt)
    a, b = SemanticIoU(5), SemanticIoU(5)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    assert torch.equal(a.merge(b).confusion, one.confusion)
    c = SemanticIoU(5)
    c.load_state_dict({"confusion": a.state_dict()["confusion"]})
    assert c.compute()["miou"] == one.compute()["miou"]
    c.reset()
    assert c.compute()["miou"] == 0.0 and c.compute()["pixel_acc"] == 0.0


def test_errors_name_the_fix():
    m = SemanticIoU(3)
    with pytest.raises(ValueError, match="nearest"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        m.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(ValueError, match="class indices"):
        m.update(torch.full((2, 2), 5), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        SemanticIoU(0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 10_000))
def test_matches_a_direct_computation(c, n, seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, c, n)
    gt[rng.random(n) < 0.2] = 255
    pred = rng.integers(0, c, n)
    m = SemanticIoU(c)
    m.update(pred, gt)
    r = m.compute()
    valid = gt != 255
    ious = []
    for k in range(c):
        tp = np.sum((gt == k) & (pred == k) & valid)
        union = np.sum(((gt == k) | (pred == k)) & valid)
        assert r["iou_upsnet"][k] == tp / max(1, union)
        if union:
            ious.append(tp / union)
    assert r["miou"] == pytest.approx(np.mean(ious) if ious else 0.0, abs=1e-12)
