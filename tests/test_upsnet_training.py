"""UPSNet panoptic head training: target builder, loss, gradients, and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES, tiny_table

from panoptic import Instances
from panoptic.fusion import UPSNetFusion

TABLE = tiny_table(2, 2)  # stuff 0,1; things 2,3


def scene():
    """8x8 semantic target: stuff 0 left, stuff 1 right, 3 thing-0/1 instances, a crowd blob, ignore pixels."""
    sem = torch.zeros(8, 8, dtype=torch.int64)
    sem[:, 4:] = 1
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 0:2, 5:7] = True
    masks[2, 5:7, 1:3] = True
    sem[masks[0] | masks[1]] = 2
    sem[masks[2]] = 3
    sem[6:8, 6:8] = 2  # crowd: thing class in the semantic map, no instance mask
    sem[4, :] = 255
    return sem, masks


def test_make_targets_hand_computed():
    sem, masks = scene()
    fusion = UPSNetFusion(TABLE)
    t = fusion.make_targets(sem, masks, generator=torch.Generator().manual_seed(0))
    # 3 instances, 30% unknown: keep max(floor(3 * 0.7), 1) = 2.
    assert t.keep.numel() == 2 and t.keep.tolist() == sorted(t.keep.tolist())
    dropped = ({0, 1, 2} - set(t.keep.tolist())).pop()
    unknown = 2 + 2
    exp = sem.clone()
    for j, idx in enumerate(t.keep.tolist()):
        exp[masks[idx]] = 2 + j
    exp[masks[dropped]] = unknown
    exp[6:8, 6:8] = unknown  # crowd -> unknown
    assert torch.equal(t.target, exp)
    assert (t.target[4] == 255).all()


def test_make_targets_without_unknown_keeps_all_and_ignores_uncovered_things():
    sem, masks = scene()
    t = UPSNetFusion(TABLE, unknown=False).make_targets(sem, masks)
    assert t.keep.tolist() == [0, 1, 2]
    assert (t.target[6:8, 6:8] == 255).all()
    assert (t.target[masks[2]] == 4).all()


def test_make_targets_is_seeded_and_follows_the_fraction():
    sem = torch.full((4, 40), 2, dtype=torch.int64)
    masks = torch.zeros(10, 4, 40, dtype=torch.bool)
    for k in range(10):
        masks[k, :, 4 * k:4 * k + 4] = True
    fusion = UPSNetFusion(TABLE, unknown_fraction=0.3)
    a = fusion.make_targets(sem, masks, generator=torch.Generator().manual_seed(7))
    b = fusion.make_targets(sem, masks, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.target, b.target)
    assert a.keep.numel() == 7
    assert UPSNetFusion(TABLE, unknown_fraction=0.5).make_targets(sem, masks[:1]).keep.tolist() == [0]
    # the reference's max(int(N * 0.7), 1) in float arithmetic: 90 * 0.7 = 62.99999999999999 keeps 62
    many = torch.zeros(90, 4, 40, dtype=torch.bool)
    assert fusion.make_targets(sem, many, generator=torch.Generator().manual_seed(0)).keep.numel() == 62
    seen = {tuple(fusion.make_targets(sem, masks, generator=torch.Generator().manual_seed(s)).keep.tolist())
            for s in range(20)}
    assert len(seen) > 5  # really random across seeds


def test_loss_normalization_counts_ignored_pixels():
    fusion = UPSNetFusion(TABLE)
    logits = torch.zeros(5, 4, 4)
    target = torch.zeros(4, 4, dtype=torch.int64)
    target[0] = 255
    loss = fusion.panoptic_loss(logits, target)
    assert math.isclose(float(loss), 12 * math.log(5) / 16, rel_tol=1e-6)
    valid = UPSNetFusion(TABLE, loss_normalization="valid").panoptic_loss(logits, target)
    assert math.isclose(float(valid), math.log(5), rel_tol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_reach_semantic_and_mask_logits(device):
    sem_t, masks = scene()
    fusion = UPSNetFusion(TABLE)
    targets = fusion.make_targets(sem_t, masks, generator=torch.Generator().manual_seed(1))
    sem = torch.randn(1, 4, 8, 8, device=device, requires_grad=True)
    mask_logits = torch.randn(len(targets.keep), 7, 7, device=device, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 6.0, 1.0], [1.0, 5.0, 2.0, 6.0]], device=device)
    labels = torch.tensor([0, 0, 1], device=device)
    keep = targets.keep.to(device)
    inst = Instances(boxes[keep], torch.ones(len(keep), device=device), labels[keep], mask_logits)
    targets.target = targets.target.to(device)
    loss = fusion.loss(sem, [inst], [targets])
    assert torch.isfinite(loss)
    loss.backward()
    assert sem.grad is not None and sem.grad.abs().sum() > 0
    assert mask_logits.grad is not None and mask_logits.grad.abs().sum() > 0
    # thing channels get gradient through the crops and the unknown channel
    assert sem.grad[0, 2:].abs().sum() > 0


def test_training_at_quarter_resolution_scales_boxes():
    fusion = UPSNetFusion(TABLE)
    sem = torch.zeros(4, 4, 4)
    sem[2] = 1.0
    inst = Instances(torch.tensor([[0.0, 0.0, 7.0, 7.0]]), torch.ones(1), torch.tensor([0]), torch.ones(1, 4, 4))
    z = fusion.panoptic_logits(sem, inst, box_scale=0.25)
    # box / 4 = [0, 0, 1.75, 1.75]: paste rows/cols 0..1, crop rows/cols 0..round(1.75)=2
    assert torch.equal(z[2], torch.tensor([[2.0, 2, 1, 0], [2, 2, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: (torch.zeros(1, 3, 4, 4), [Instances.empty()]), "channels"),
        (lambda: (torch.full((1, 4, 4, 4), float("nan")), [Instances.empty()]), "NaN"),
        (lambda: (torch.zeros(4, 4, 4), [Instances.empty()]), r"\(B, C, H, W\)"),
        (lambda: (torch.zeros(2, 4, 4, 4), [Instances.empty()]), "batch size"),
        (lambda: (torch.zeros(1, 4, 4, 4, dtype=torch.int64), [Instances.empty()]), "float"),
        (lambda: (torch.zeros(1, 4, 4, 4), [Instances(torch.tensor([[0.0, 0, 1, 1]]), torch.ones(1),
                                                      torch.tensor([2]), torch.ones(1, 4, 4))]), "thing indices"),
        (lambda: (torch.zeros(1, 4, 4, 4), [Instances(torch.tensor([[3.0, 0, 1, 1]]), torch.ones(1),
                                                      torch.tensor([0]), torch.ones(1, 4, 4))]), "degenerate"),
        (lambda: (torch.zeros(1, 4, 4, 4), [Instances(torch.tensor([[0.0, 0, 1, 1]]), torch.ones(1),
                                                      torch.tensor([0]), torch.full((1, 4, 4), float("inf")))]),
         "NaN or inf"),
        (lambda: (torch.zeros(1, 4, 4, 4), [Instances(torch.tensor([[0.0, 0, 1]]), torch.ones(1),
                                                      torch.tensor([0]), torch.ones(1, 4, 4))]), r"\(N, 4\)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_fix(make, match):
    sem, inst = make()
    with pytest.raises(ValueError, match=match):
        UPSNetFusion(TABLE)(sem, inst)


def test_bad_targets():
    fusion = UPSNetFusion(TABLE)
    with pytest.raises(ValueError, match="semantic_target values"):
        fusion.make_targets(torch.full((4, 4), 9), torch.zeros(0, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="resize masks"):
        fusion.make_targets(torch.zeros(4, 4, dtype=torch.int64), torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="kept instances"):
        fusion.panoptic_loss(torch.zeros(3, 2, 2), torch.full((2, 2), 4))
