"""Hand-computed fixtures for every rule of UPSNetFusion (exact expected maps)."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, DEVICES, tiny_table

from panoptic import Instances, ops
from panoptic.formats import to_label_divisor
from panoptic.fusion import PruningConfig, UPSNetFusion
from panoptic.fusion.pruning import prune_instances

NO_PRUNE = PruningConfig(score_threshold=-1.0, nms_iou=None, overlap_threshold=None)


def img_instances(boxes, labels, masks, scores=None) -> Instances:
    n = len(boxes)
    return Instances(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                     torch.tensor(scores if scores is not None else [0.9] * n, dtype=torch.float32),
                     torch.tensor(labels, dtype=torch.int64), torch.stack(masks) if n else torch.zeros(0, 8, 8),
                     mask_space="image")


@pytest.mark.parametrize("device", DEVICES)
def test_mmdet_toy_2x2(device):
    # mmdetection's toy: 2 stuff + 2 things; thing semantics at (0,0),(1,1); stuff0 at (0,1), stuff1 at (1,0).
    table = tiny_table(2, 2)
    sem = torch.zeros(1, 4, 2, 2)
    sem[0, 0, 0, 1] = sem[0, 1, 1, 0] = sem[0, 2, 0, 0] = sem[0, 3, 1, 1] = 5.0
    masks = [torch.tensor([[3.0, -3.0], [-3.0, -3.0]]), torch.tensor([[-3.0, -3.0], [-3.0, 3.0]])]
    inst = img_instances([[0, 0, 0, 0], [1, 1, 1, 1]], [0, 1], masks, scores=[0.8, 0.7])
    fusion = UPSNetFusion(table, stuff_area_limit=1)
    res = fusion(sem.to(device), [inst.to(device)])[0]
    # Z at (0,0): A = 5 + 3 = 8 wins; (1,1): B = 8 wins; stuff pixels: stuff logit 5 vs zeros.
    assert to_label_divisor(res).cpu().tolist() == [[2001, 0], [1000, 3001]]
    assert res.segment_map.cpu().tolist() == [[3, 1], [2, 4]]
    assert res.source.cpu().tolist() == [-1, -1, 0, 1]
    assert not res.unknown_mask.any()
    # Empty-instance case: the thing pixels have no instance -> unknown = max thing - 0 = 5 wins -> void.
    res = fusion(sem.to(device), [Instances.empty(device=device)])[0]
    assert to_label_divisor(res).cpu().tolist() == [[-1, 0], [1000, -1]]
    assert res.unknown_mask.cpu().tolist() == [[True, False], [False, True]]


def _square_instances(specs, size=8):
    """specs: (x0, y0, x1, y1, label, score, mask_logit) with an image-space mask filling the box."""
    boxes, labels, masks, scores = [], [], [], []
    for x0, y0, x1, y1, lab, score, val in specs:
        m = torch.full((size, size), -10.0)
        m[y0:y1 + 1, x0:x1 + 1] = val
        boxes.append([x0, y0, x1, y1])
        labels.append(lab)
        masks.append(m)
        scores.append(score)
    return img_instances(boxes, labels, masks, scores)


def test_pruning_score_threshold_is_strict():
    inst = _square_instances([(0, 0, 1, 1, 0, 0.6, 5.0), (4, 4, 5, 5, 0, 0.61, 5.0)])
    keep = prune_instances(inst, (8, 8), PruningConfig())
    assert keep.tolist() == [1]


def test_pruning_class_agnostic_nms():
    # IoU of the two boxes with +1 pixel sides (the reference's) = 5*4 / (25 + 25 - 20) = 0.667 > 0.5: the
    # lower score goes, even though the classes differ.
    inst = _square_instances([(0, 0, 4, 4, 0, 0.7, 5.0), (0, 1, 4, 5, 1, 0.9, 5.0), (6, 6, 7, 7, 1, 0.8, 5.0)])
    keep = prune_instances(inst, (8, 8), PruningConfig(overlap_threshold=None))
    assert keep.tolist() == [1, 2]
    keep = prune_instances(inst, (8, 8), PruningConfig(nms_iou=0.66, overlap_threshold=None))
    assert keep.tolist() == [1, 2]
    keep = prune_instances(inst, (8, 8), PruningConfig(nms_iou=0.67, overlap_threshold=None))
    assert keep.tolist() == [1, 2, 0]


def test_pruning_same_class_intersection_over_self():
    # A: 4x4 = 16 px (score .9). B (same class, 10 px, score .8) overlaps A by 3 px: 0.3 is not > 0.3 -> kept.
    # C (same class, 10 px, score .7) overlaps A∪B by 4 px: 0.4 > 0.3 -> dropped.
    # D: like C but another class -> kept (only same-class masks count).
    size = 8
    a = torch.full((size, size), -5.0)
    a[0:4, 0:4] = 5.0
    b = torch.full((size, size), -5.0)
    b[3, 1:4] = 5.0  # 3 px inside A
    b[4:6, 1:4] = 5.0  # 6 more
    b[6, 1] = 5.0  # 10 px total
    c = torch.full((size, size), -5.0)
    c[0:2, 2:4] = 5.0  # 4 px inside A
    c[0:2, 4:7] = 5.0  # 6 px outside
    boxes = [[0, 0, 7, 7]] * 4
    inst = img_instances(boxes, [0, 0, 0, 1], [a, b, c, c.clone()], scores=[0.9, 0.8, 0.7, 0.65])
    keep = prune_instances(inst, (size, size), PruningConfig(nms_iou=None))
    assert keep.tolist() == [0, 1, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruning_overlap_only_against_kept_masks_whose_boxes_touch(backend):
    # Masks = their whole boxes (logit 5 inside), class 0 unless said. A: rows 0-3 x cols 0-3 (16 px). B touches A:
    # rows 2-5 x cols 0-2 (12 px, 6 in A: 0.5 > 0.3 -> dropped). C touches B only: rows 4-7 x cols 0-2 (12 px, 6 in
    # B, but a dropped mask is not painted -> kept). D (class 1) = A -> kept (other class). E far away (no box
    # touches it: kept without a canvas). F reaches past every other box: rows 7-10 x cols 0-11 (48 px, 3 in C
    # -> kept).
    size = 12
    boxes = [[0, 0, 3, 3], [0, 2, 2, 5], [0, 4, 2, 7], [0, 0, 3, 3], [8, 0, 11, 2], [0, 7, 11, 10]]
    masks = []
    for x0, y0, x1, y1 in boxes:
        m = torch.full((size, size), -5.0)
        m[y0:y1 + 1, x0:x1 + 1] = 5.0
        masks.append(m)
    scores = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65]
    inst = img_instances(boxes, [0, 0, 0, 1, 0, 0], masks, scores=scores)
    with ops.backend(backend):
        keep = prune_instances(inst, (size, size), PruningConfig(nms_iou=None))
    assert keep.tolist() == [0, 2, 3, 4, 5]


def test_pruning_drops_empty_masks_and_caps_count():
    inst = _square_instances([(0, 0, 1, 1, 0, 0.9, -1.0), (2, 2, 3, 3, 0, 0.8, 5.0), (5, 5, 6, 6, 1, 0.95, 5.0)])
    assert prune_instances(inst, (8, 8), PruningConfig()).tolist() == [2, 1]
    assert prune_instances(inst, (8, 8), PruningConfig(max_instances=1)).tolist() == [2]


def _assignment_scene(n_stuff1: int, other_thing: bool = False):
    """8x8: stuff0 everywhere (logit 5); one thing-0 instance on rows 0-3, cols 0-3 (16 px) that wins every
    pixel of its box; inside, the semantic argmax is stuff1 (or thing 1) on ``n_stuff1`` pixels."""
    table = tiny_table(2, 2)
    sem = torch.zeros(4, 8, 8)
    sem[0] = 5.0
    sem[0, 0:4, 0:4] = 0.0
    sem[2, 0:4, 0:4] = 2.0  # thing 0 = its own class
    flat = torch.zeros(16)
    flat[:n_stuff1] = 1
    region = flat.reshape(4, 4).bool()
    ch = 3 if other_thing else 1
    sem[ch, 0:4, 0:4][region] = 4.0
    m = torch.full((8, 8), -10.0)
    m[0:4, 0:4] = 10.0
    inst = img_instances([[0, 0, 3, 3]], [0], [m])
    return table, sem[None], inst


@pytest.mark.parametrize(("n_stuff1", "merged"), [(9, True), (8, False), (7, False)])
def test_class_assignment_heuristic_threshold_is_strict(n_stuff1, merged):
    table, sem, inst = _assignment_scene(n_stuff1)
    res = UPSNetFusion(table, stuff_area_limit=0, pruning=NO_PRUNE)(sem, [inst])[0]
    if merged:  # 9/16 > 0.5: the whole instance joins the stuff1 segment
        assert res.category.tolist() == [0, 1] and res.area.tolist() == [48, 16]
        assert res.source.tolist() == [-1, -1]
    else:
        assert res.category.tolist() == [0, 2] and res.area.tolist() == [48, 16]
        assert res.source.tolist() == [-1, 0]


def test_class_assignment_never_switches_to_another_thing_in_heuristic_mode():
    table, sem, inst = _assignment_scene(12, other_thing=True)
    res = UPSNetFusion(table, stuff_area_limit=0, pruning=NO_PRUNE)(sem, [inst])[0]
    assert res.category.tolist() == [0, 2]
    res = UPSNetFusion(table, stuff_area_limit=0, pruning=NO_PRUNE, class_assignment="semantic")(sem, [inst])[0]
    assert res.category.tolist() == [0, 3]  # the semantic mode (thing 1)
    table, sem, inst = _assignment_scene(12)
    res = UPSNetFusion(table, stuff_area_limit=0, pruning=NO_PRUNE, class_assignment="detector")(sem, [inst])[0]
    assert res.category.tolist() == [0, 2]  # detector class kept despite 75% stuff1


def test_unknown_where_things_have_no_box_and_where_a_stronger_thing_disagrees():
    table = tiny_table(1, 2)
    sem = torch.zeros(1, 3, 8, 8)
    sem[0, 0] = 1.0  # stuff0 weakly everywhere
    sem[0, 1, 0:3, 5:8] = 6.0  # thing0 region, no box -> unknown (6 - 0 > 1 and > 0)
    # Inside the box: its class (thing1) says 1.5, thing0 says 6: U = 6 - 1.5 = 4.5 > Z = 1.5 + 2 = 3.5.
    sem[0, 2, 4:8, 0:4] = 1.5
    sem[0, 1, 6:8, 0:4] = 6.0
    m = torch.full((8, 8), -10.0)
    m[4:8, 0:4] = 2.0
    inst = img_instances([[0, 4, 3, 7]], [1], [m])
    fusion = UPSNetFusion(table, stuff_area_limit=0, pruning=NO_PRUNE)
    res = fusion(sem, [inst])[0]
    expected_unknown = torch.zeros(8, 8, dtype=torch.bool)
    expected_unknown[0:3, 5:8] = True
    expected_unknown[6:8, 0:4] = True
    assert torch.equal(res.unknown_mask, expected_unknown)
    assert (res.segment_map[expected_unknown] == 0).all()
    assert res.category.tolist() == [0, 2] and res.area.tolist() == [64 - 9 - 16, 8]
    # Without the unknown channel those pixels go to the best of stuff (1) and the instance channels.
    res = UPSNetFusion(table, unknown=False, stuff_area_limit=0, pruning=NO_PRUNE)(sem, [inst])[0]
    assert not res.unknown_mask.any() and (res.segment_map != 0).all()
    assert res.area.tolist() == [64 - 16, 16]


@pytest.mark.parametrize(("limit", "kept"), [(16, True), (17, False)])
def test_stuff_area_limit_is_strict_and_voids(limit, kept):
    table = tiny_table(2, 1)
    sem = torch.zeros(1, 3, 8, 8)
    sem[0, 0] = 5.0
    sem[0, 1, 0:4, 0:4] = 9.0  # stuff1: 16 px
    res = UPSNetFusion(table, stuff_area_limit=limit)(sem, [Instances.empty()])[0]
    small = res.segment_map[0:4, 0:4]
    if kept:
        assert res.category.tolist() == [0, 1] and (small == 2).all()
    else:
        assert res.category.tolist() == [0] and (small == 0).all()
        assert not res.unknown_mask.any()  # small stuff is void, not unknown


def test_stuff_area_is_measured_after_class_assignment():
    # stuff1 has 8 px of its own plus an instance of 16 px that merges into it: 24 >= 20 -> kept.
    table, sem, inst = _assignment_scene(9)
    sem[0, 1, 6, 0:8] = 9.0
    res = UPSNetFusion(table, stuff_area_limit=20, pruning=NO_PRUNE)(sem, [inst])[0]
    assert res.category.tolist() == [0, 1] and res.area.tolist() == [40, 24]
    res = UPSNetFusion(table, stuff_area_limit=20, pruning=NO_PRUNE, class_assignment="detector")(sem, [inst])[0]
    assert res.category.tolist() == [0, 2]  # stuff1 alone (8 px) is voided


def test_zero_outside_box_lets_an_instance_win_where_all_logits_are_negative():
    # The reference pads instance channels with 0: with every semantic logit negative, the first
    # instance wins even far from its box. We keep that behaviour (documented).
    table = tiny_table(1, 1)
    sem = torch.full((1, 2, 4, 4), -3.0)
    sem[0, 1, 0, 0] = -1.0
    m = torch.full((4, 4), 4.0)
    inst = img_instances([[0, 0, 0, 0]], [0], [m])
    fusion = UPSNetFusion(table, unknown=False, stuff_area_limit=0, pruning=NO_PRUNE, class_assignment="detector")
    res = fusion(sem, [inst])[0]
    assert (res.segment_map == 1).all() and res.category.tolist() == [1]


def test_box_outside_image_and_one_pixel_images():
    table = tiny_table(1, 1)
    inst = img_instances([[10, 10, 12, 12], [0, 0, 1, 1]], [0, 0], [torch.ones(8, 8), torch.ones(8, 8)])
    sem = torch.zeros(1, 2, 8, 8)
    sem[0, 0] = 1.0
    sem[0, 1, 0:2, 0:2] = 2.0
    res = UPSNetFusion(table, stuff_area_limit=0)(sem, [inst])[0]
    assert res.source.tolist() == [-1, 1] and res.area.tolist() == [60, 4]  # the outside box has no pixel
    res.validate(table)
    one = Instances(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([0.9]), torch.tensor([0]), torch.ones(1, 28, 28))
    res = UPSNetFusion(table, stuff_area_limit=0)(torch.tensor([[[[0.0]], [[1.0]]]]), [one])[0]
    assert res.segment_map.tolist() == [[1]] and res.isthing.tolist() == [True]


def test_zero_stuff_table():
    table = tiny_table(0, 2)
    sem = torch.zeros(1, 2, 6, 6)
    sem[0, 0, :3] = 4.0
    inst = _square_instances([(0, 0, 5, 2, 0, 0.9, 3.0)], size=6)
    res = UPSNetFusion(table)(sem, [inst])[0]
    res.validate(table)
    # rows 3-5: instance channel 0 (outside its box) ties the unknown channel 0 - 0; the first wins.
    assert res.category.tolist() == [0] and res.area.tolist() == [36]
    assert res.unknown_mask.sum() == 0


def test_output_size_upsamples_semantic_logits_before_fusion():
    table = tiny_table(2, 1)
    sem = torch.zeros(1, 3, 4, 4)
    sem[0, 1, :, 2:] = 5.0
    res = UPSNetFusion(table, stuff_area_limit=0)(sem, [Instances.empty()], output_size=(8, 8))[0]
    assert res.image_size == (8, 8)
    # bilinear (align_corners=False): output column 3 samples input column 1.25 -> 0.25 * 5 > 0
    assert (res.segment_map[:, :3] == 1).all() and (res.segment_map[:, 3:] == 2).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("channel", [0, 3])  # a stuff and a thing channel
def test_one_non_finite_logit_raises(value, channel):
    # A single bad value anywhere, also where it would not be a channel maximum (-inf), is rejected up front.
    table = tiny_table(2, 2)
    sem = torch.randn(1, 4, 6, 9, generator=torch.Generator().manual_seed(0))
    sem[0, channel, 4, 7] = value
    inst = img_instances([[1, 1, 4, 3]], [0], [torch.full((6, 9), 2.0)])
    fusion = UPSNetFusion(table, pruning=NO_PRUNE)
    with pytest.raises(ValueError, match="NaN or inf"):
        fusion(sem, [inst])
    with pytest.raises(ValueError, match="NaN or inf"):
        fusion.panoptic_argmax(sem[0], inst)


def test_huge_finite_logits_are_accepted():
    # Finite logits whose sum overflows float32 are valid input (the fast finiteness check must not reject them).
    table = tiny_table(2, 2)
    sem = torch.full((1, 4, 5, 5), 3.0e38)
    sem[0, :2, :, 2:] = -3.0e38  # right: a thing class is far larger and no instance covers it -> unknown
    fusion = UPSNetFusion(table, stuff_area_limit=0)
    res = fusion(sem, [Instances.empty()])[0]
    assert res.category.tolist() == [0] and res.area.tolist() == [10]  # left: stuff 0 ties everything, wins
    assert int(res.unknown_mask.sum()) == 15
    z = fusion.panoptic_logits(sem[0], Instances.empty())
    assert torch.equal(fusion.panoptic_argmax(sem[0], Instances.empty()), z.argmax(0))


def test_non_finite_logit_that_a_downsampling_resize_skips_still_raises():
    # Resizing 16x16 -> 4x4 (bilinear, align_corners=False) reads rows/cols 4i+1 and 4i+2 only: the fusion never
    # sees (0, 0), so the raw logits are checked before the resize.
    table = tiny_table(2, 2)
    sem = torch.zeros(1, 4, 16, 16)
    sem[0, 1, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        UPSNetFusion(table)(sem, [Instances.empty()], output_size=(4, 4))


# ------------------------------------------------------------------------- parity with the reference code
@pytest.mark.parametrize(("box", "pixels"), [
    ([7.4, 1.0, 7.9, 2.0], [(1, 7), (2, 7)]),  # last column: trunc -> column 7 (x1 > W - 1 used to drop it)
    ([-5.0, 1.0, -0.2, 2.0], [(1, 0), (2, 0)]),  # first column: trunc(-0.2) = 0
    ([2.0, 7.3, 3.0, 7.8], [(7, 2), (7, 3)]),  # last row
    ([2.0, -3.0, 3.0, -0.5], [(0, 2), (0, 3)]),  # first row
    ([8.0, 1.0, 9.0, 2.0], []),  # x1 >= W: the truncated box misses the image
    ([-3.0, 1.0, -1.0, 2.0], []),  # x2 <= -1
])
@pytest.mark.parametrize("path", ["dense", *BACKENDS])
def test_boxes_on_every_border_keep_their_truncated_pixels(box, pixels, path):
    # 8x8, one stuff (logit 1), one thing (semantic logit 0); mask logits 4: the instance (0 + 4) wins exactly
    # the pixels of its truncated, clipped paste box (elsewhere its channel is 0 + 0 < 1).
    table = tiny_table(1, 1)
    sem = torch.zeros(2, 8, 8)
    sem[0] = 1.0
    inst = Instances(torch.tensor([box]), torch.tensor([0.9]), torch.tensor([0]), torch.full((1, 28, 28), 4.0))
    fusion = UPSNetFusion(table, unknown=False, pruning=NO_PRUNE)
    if path == "dense":
        channel = fusion.panoptic_logits(sem, inst).argmax(0)
    else:
        with ops.backend(path):
            channel = fusion.panoptic_argmax(sem, inst)
    got = sorted(map(tuple, torch.nonzero(channel == 1).tolist()))
    assert got == pixels


def test_training_box_in_the_last_column_of_the_quarter_map_gets_its_channel():
    # A ground-truth mask in input columns 13..15 has the pixel-edge box [13, 0, 16, 4]; at 1/4 resolution
    # [3.25, 0, 4, 1] lies in column 3 of a width-4 map (it used to get an all-zero channel).
    table = tiny_table(1, 1)
    sem4 = torch.zeros(2, 1, 4)
    inst = Instances(torch.tensor([[13.0, 0.0, 16.0, 4.0]]), torch.ones(1), torch.tensor([0]),
                     torch.full((1, 28, 28), 2.0))
    z = UPSNetFusion(table).panoptic_logits(sem4, inst, box_scale=0.25)
    assert z[1].tolist() == [[0.0, 0.0, 0.0, 2.0]]


def test_nms_clips_boxes_first_and_counts_pixels_inclusively():
    # [-10, 0, 3, 3] clipped to [0, 0, 3, 3] is [0, 0, 3, 3]: IoU 1 -> one instance (unclipped IoU was 0.31).
    inst = _square_instances([(0, 0, 3, 3, 0, 0.9, 5.0), (0, 0, 3, 3, 1, 0.8, 5.0)])
    inst.boxes[0] = torch.tensor([-10.0, 0.0, 3.0, 3.0])
    assert prune_instances(inst, (8, 8), PruningConfig(overlap_threshold=None)).tolist() == [0]
    # +1 sides: [0, 0, 1, 1] and [1, 0, 2, 1] share a 1x2 column: IoU = 2 / (4 + 4 - 2) = 1/3 (0 without +1).
    inst = _square_instances([(0, 0, 1, 1, 0, 0.9, 5.0), (1, 0, 2, 1, 0, 0.8, 5.0)])
    assert prune_instances(inst, (8, 8), PruningConfig(nms_iou=0.3, overlap_threshold=None)).tolist() == [0]
    assert prune_instances(inst, (8, 8), PruningConfig(nms_iou=0.34, overlap_threshold=None)).tolist() == [0, 1]


def test_nms_keeps_the_later_of_two_equal_scores():
    inst = _square_instances([(0, 0, 3, 3, 0, 0.9, 5.0), (0, 0, 3, 3, 1, 0.9, 5.0)])
    assert prune_instances(inst, (8, 8), PruningConfig(overlap_threshold=None)).tolist() == [1]


def test_max_instances_keeps_every_box_tied_with_the_last():
    specs = [(2 * i, 0, 2 * i, 0, 0, s, 5.0) for i, s in enumerate([0.9, 0.8, 0.8, 0.7])]
    inst = _square_instances(specs)
    assert prune_instances(inst, (8, 8), PruningConfig(max_instances=2)).tolist() == [0, 1, 2]
    assert prune_instances(inst, (8, 8), PruningConfig(max_instances=1)).tolist() == [0]
    # equal scores survive NMS in the later-first order; the mask test then visits them in input order
    inst = _square_instances([(2 * i, 0, 2 * i, 0, 0, 0.8, 5.0) for i in range(3)])
    assert prune_instances(inst, (8, 8), PruningConfig()).tolist() == [0, 1, 2]
