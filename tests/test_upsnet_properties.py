"""Property-based tests of UPSNet's panoptic logits, the box-local fast path and result invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKENDS, same_segmentation, tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import Instances, ops
from panoptic.formats import to_pairs
from panoptic.fusion import PruningConfig, UPSNetFusion
from panoptic.fusion.oracle import oracle_inputs
from panoptic.segments import assemble_result

TABLE = tiny_table(3, 3)
NST = TABLE.num_stuff


@st.composite
def scenes(draw, max_side: int = 20, max_n: int = 6, roi: bool = True):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    n = draw(st.integers(0, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    ties = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    sem = torch.randn(TABLE.num_classes, h, w, generator=g) * 3
    x1 = torch.rand(n, generator=g) * (w + 2) - 1
    y1 = torch.rand(n, generator=g) * (h + 2) - 1
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=g) * w, y1 + torch.rand(n, generator=g) * h], 1)
    if draw(st.booleans()):  # boxes across every border: coordinates within a pixel of an image edge
        edge = torch.tensor([-1.0, 0.0, w - 1.0, float(w), -1.0, 0.0, h - 1.0, float(h)])
        pick = torch.randint(0, 4, (n, 4), generator=g) + torch.tensor([0, 4, 0, 4])
        near = edge[pick] + torch.rand(n, 4, generator=g) * 0.98 - 0.49
        lo, hi = torch.minimum(near[:, :2], near[:, 2:]), torch.maximum(near[:, :2], near[:, 2:])
        boxes = torch.cat([lo, hi], 1)
    if roi:
        masks = torch.randn(n, 5, 5, generator=g) * 3
    else:
        masks = torch.randn(n, h, w, generator=g) * 3
    if ties:  # integer logits make exact ties common
        sem, masks = sem.round(), masks.round()
        if masks.numel() and bool(((masks == 0) | (masks == 1)).all()):  # tiny images: would read as binary masks,
            masks = masks - 1  # which Instances refuses as logits
    inst = Instances(boxes, torch.rand(n, generator=g), torch.randint(0, TABLE.num_things, (n,), generator=g),
                     masks, mask_space="roi" if roi else "image")
    return sem, inst


def expected_instance_channel(sem, box, label, mask):
    """Channel of one instance, from the documented geometry (independent of the implementation)."""
    h, w = sem.shape[1:]
    x1, y1, x2, y2 = [float(v) for v in box]
    out = torch.zeros(h, w)
    if math.trunc(x1) > w - 1 or math.trunc(x2) < 0 or math.trunc(y1) > h - 1 or math.trunc(y2) < 0:
        return out, out.clone()  # the truncated box misses the image
    x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
    y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    px0, px1, py0, py1 = math.trunc(x1), math.trunc(x2), math.trunc(y1), math.trunc(y2)
    cx1, cy1 = round(x2), round(y2)  # Python's round is half-to-even, like torch.round
    y = out.clone()
    y[py0:cy1 + 1, px0:cx1 + 1] = sem[NST + label, py0:cy1 + 1, px0:cx1 + 1]
    m = F.interpolate(mask[None, None], size=(py1 - py0 + 1, px1 - px0 + 1), mode="bilinear",
                      align_corners=False)[0, 0]
    out[py0:py1 + 1, px0:px1 + 1] = m
    return y + out, y


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_logit_construction_matches_the_documented_formula(scene):
    sem, inst = scene
    fusion = UPSNetFusion(TABLE)
    z = fusion.panoptic_logits(sem, inst)
    n = len(inst)
    h, w = sem.shape[1:]
    assert z.shape == (NST + n + 1, h, w)
    assert torch.equal(z[:NST], sem[:NST])
    ys = []
    for i in range(n):
        exp, y = expected_instance_channel(sem, inst.boxes[i], int(inst.labels[i]), inst.mask_logits[i])
        torch.testing.assert_close(z[NST + i], exp, rtol=1e-5, atol=1e-5)
        ys.append(y)
    ymax = torch.stack(ys).amax(0) if n else torch.zeros(h, w)
    torch.testing.assert_close(z[-1], sem[NST:].amax(0) - ymax)


@settings(max_examples=40, deadline=None)
@given(scenes(), st.randoms(use_true_random=False))
def test_permuting_instances_permutes_channels_only(scene, rnd):
    sem, inst = scene
    n = len(inst)
    perm = list(range(n))
    rnd.shuffle(perm)
    perm_t = torch.tensor(perm, dtype=torch.int64)
    fusion = UPSNetFusion(TABLE)
    z, zp = fusion.panoptic_logits(sem, inst), fusion.panoptic_logits(sem, inst[perm_t])
    assert torch.equal(zp[:NST], z[:NST]) and torch.equal(zp[-1], z[-1])
    assert torch.equal(zp[NST:NST + n], z[NST:NST + n][perm_t])


@settings(max_examples=80, deadline=None)
@given(scenes(), st.booleans(), st.sampled_from(BACKENDS))
def test_box_local_fast_path_equals_dense_argmax(scene, unknown, name):
    sem, inst = scene
    fusion = UPSNetFusion(TABLE, unknown=unknown)
    with ops.backend(name):  # the C kernel when built, and the torch specification
        fast = fusion.panoptic_argmax(sem, inst)
    assert torch.equal(fast, fusion.panoptic_logits(sem, inst).argmax(0))



@pytest.mark.parametrize("name", BACKENDS)
def test_fast_path_with_more_stuff_channels_than_the_exact_sum_holds(name):
    """30 stuff classes (the torch path's first stuff argmax then takes ``max`` instead of its exact power-of-two
    sum, which holds 24 channels), integer logits: ties among stuff channels decide many pixels."""
    table = tiny_table(30, 3)
    fusion = UPSNetFusion(table)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        h, w, n = 9 + seed % 5, 11 + seed % 7, seed % 5
        sem = torch.randint(-2, 3, (table.num_classes, h, w), generator=g).float()
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
        boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 6], 1)
        masks = torch.randint(-3, 4, (n, 5, 5), generator=g).float() * 2 + 1  # odd values: not binary masks
        inst = Instances(boxes, torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g), masks)
        with ops.backend(name):
            fast = fusion.panoptic_argmax(sem, inst)
        assert torch.equal(fast, fusion.panoptic_logits(sem, inst).argmax(0))

@settings(max_examples=40, deadline=None)
@given(scenes(roi=False), st.sampled_from(BACKENDS))
def test_fast_path_with_full_image_masks(scene, name):
    sem, inst = scene
    fusion = UPSNetFusion(TABLE)
    with ops.backend(name):
        fast = fusion.panoptic_argmax(sem, inst)
    assert torch.equal(fast, fusion.panoptic_logits(sem, inst).argmax(0))


@settings(max_examples=60, deadline=None)
@given(scenes(), st.sampled_from(["heuristic", "detector", "semantic"]), st.booleans(), st.integers(0, 30))
def test_result_invariants(scene, assignment, unknown, limit):
    sem, inst = scene
    fusion = UPSNetFusion(TABLE, class_assignment=assignment, unknown=unknown, stuff_area_limit=limit,
                          pruning=PruningConfig(score_threshold=0.2))
    res = fusion(sem[None], [inst])[0]
    res.validate(TABLE)  # contiguous ids, areas == pixel counts, one stuff segment per category, ...
    sm = res.segment_map
    assert sm.dtype == torch.int32 and sm.shape == sem.shape[1:]
    assert not (res.unknown_mask & (sm != 0)).any()
    stuff_area = res.area[~res.isthing]
    assert (stuff_area >= limit).all()
    things = res.source[res.isthing]
    assert (things >= 0).all() and things.unique().numel() == things.numel()
    assert (inst.scores[things] > 0.2).all()


def random_gt(g: torch.Generator, h: int, w: int, n_things: int):
    """Stuff halves, rectangular things, a void band in row 0 outside every box (no crowd)."""
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[:, w // 2:] = 1
    cats = [0, 2]
    for k in range(n_things):
        y0 = int(torch.randint(2, h - 3, (1,), generator=g))
        x0 = int(torch.randint(0, w - 3, (1,), generator=g))
        hh, ww = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(2, 5, (1,), generator=g))
        labels[y0:y0 + hh, x0:x0 + ww] = 2 + k
        cats.append(NST + int(torch.randint(0, TABLE.num_things, (1,), generator=g)))
    labels[0] = -1
    cat = torch.tensor(cats)
    return assemble_result(labels, cat, TABLE.isthing_tensor()[cat], torch.ones(len(cats)),
                           torch.full((len(cats),), -1))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 5))
def test_oracle_inputs_reproduce_the_ground_truth(seed, n_things):
    from panoptic.fusion.heuristic import HeuristicFusion

    g = torch.Generator().manual_seed(seed)
    gt = random_gt(g, 16, 20, n_things)
    sem, inst = oracle_inputs(gt, TABLE)
    upsnet = UPSNetFusion(TABLE, stuff_area_limit=0, pruning=PruningConfig(nms_iou=None))
    heuristic = HeuristicFusion(TABLE, stuff_area_limit=0)
    for fusion in (upsnet, heuristic):
        res = fusion(sem[None], [inst])[0]
        # Same partition and categories; segment order may differ (stuff first vs things first).
        pairs_res = to_pairs(res)
        pairs_gt = to_pairs(gt)
        assert torch.equal(pairs_res[..., 0], pairs_gt[..., 0])
        assert res.num_segments == gt.num_segments
        _, inv_a = torch.unique(res.segment_map, return_inverse=True)
        _, inv_b = torch.unique(gt.segment_map, return_inverse=True)
        joint = torch.unique(inv_a * 1000 + inv_b)
        assert joint.numel() == torch.unique(inv_a).numel() == torch.unique(inv_b).numel()
    # UPSNet orders segments stuff first, then instances in score order: with equal scores the GT order.
    res = upsnet(sem[None], [inst])[0]
    assert same_segmentation(res, gt)
