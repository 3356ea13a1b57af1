"""Explicit mask kinds on ``Instances`` (logits, probabilities, binary), their validation and derived boxes.

Every kind must reach the same foreground decision: probability ``p >= t`` (``>`` for the strict UPSNet flavor)
iff logit ``>= log(t / (1 - t))``; a binary mask is a probability of exactly 0 or 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CategoryTable, HeuristicFusion, Instances, UPSNetFusion
from panoptic.fusion.pruning import PruningConfig
from panoptic.structures import boxes_from_masks, mask_foreground, probabilities_to_logits

TABLE = CategoryTable.from_coco([{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 10, "isthing": 0},
                                 {"id": 11, "isthing": 0}])
FLAVORS = ["panopticapi", "detectron2", "mmdet", "upsnet"]
F32_HALF_NEIGHBOURS = [float(np.nextafter(np.float32(0.5), np.float32(0))), 0.5,
                       float(np.nextafter(np.float32(0.5), np.float32(1)))]


def _inst(masks: torch.Tensor, kind: str, n_labels: int = 2, seed: int = 0, space: str = "image") -> Instances:
    g = torch.Generator().manual_seed(seed)
    n = masks.shape[0]
    if space == "image":
        boxes = boxes_from_masks(masks, kind)
    else:
        boxes = torch.tensor([[1.0, 2.0, 9.0, 7.0]]).repeat(n, 1)
    scores = torch.rand(n, generator=g) * 0.5 + 0.5
    return Instances(boxes, scores, torch.randint(0, n_labels, (n,), generator=g), masks, space, kind)


# ------------------------------------------------------------------------------------------ the decision itself
def test_threshold_direction_at_exactly_one_half():
    p = torch.tensor(F32_HALF_NEIGHBOURS)
    logits = probabilities_to_logits(p)
    assert logits.tolist()[1] == 0.0 and logits[0] < 0 < logits[2]
    for strict, expected in ((False, [False, True, True]), (True, [False, False, True])):
        assert mask_foreground(p, "probabilities", 0.5, strict).tolist() == expected
        assert mask_foreground(logits, "logits", 0.5, strict).tolist() == expected
    assert mask_foreground(torch.tensor([True, False]), "binary", 0.5, True).tolist() == [True, False]
    assert mask_foreground(torch.tensor([1.0, 0.0]), "binary", 0.999).tolist() == [True, False]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=50))
def test_probability_logit_sign_is_exact(values):
    p = torch.tensor(values, dtype=torch.float32)
    logit = probabilities_to_logits(p)
    assert torch.isfinite(logit).all()
    assert torch.equal(p >= 0.5, logit >= 0) and torch.equal(p > 0.5, logit > 0)
    assert torch.equal(mask_foreground(p, "probabilities"), mask_foreground(logit, "logits"))


# ------------------------------------------------------------------------------- the fusions, kind by kind
@pytest.mark.parametrize("flavor", FLAVORS)
def test_heuristic_same_result_for_every_kind(flavor):
    """Image-space masks at output size: probabilities, their sign-exact logits and their binarisation agree."""
    rng = np.random.default_rng(1)
    strict = flavor == "upsnet"
    for seed in range(40):
        h, w = int(rng.integers(5, 23)), int(rng.integers(5, 23))
        n = int(rng.integers(0, 6))
        g = torch.Generator().manual_seed(seed)
        p = torch.rand(n, h, w, generator=g)
        p[p < 0.2] = 0.5  # many exact ties with the threshold
        sem = torch.randn(1, TABLE.num_classes, h, w, generator=g)
        fusion = HeuristicFusion(TABLE, flavor, stuff_area_limit=3, score_threshold=0.0)
        ref = fusion(sem, [_inst(p, "probabilities", seed=seed)])[0]
        as_logits = fusion(sem, [_inst(probabilities_to_logits(p), "logits", seed=seed)])[0]
        binary = p > 0.5 if strict else p >= 0.5
        as_binary = fusion(sem, [_inst(binary, "binary", seed=seed)])[0]
        as_float_binary = fusion(sem, [_inst(binary.float(), "binary", seed=seed)])[0]
        for other in (as_logits, as_binary, as_float_binary):
            assert ref.equal(other)


def test_heuristic_roi_probabilities_are_pasted_then_thresholded():
    fusion = HeuristicFusion(TABLE, "panopticapi", stuff_area_limit=0)
    sem = torch.zeros(1, TABLE.num_classes, 10, 12)
    sem[0, 0] = 1.0
    half = torch.zeros(1, 4, 4)
    half[0, :, 2:] = 1.0  # right half foreground
    inst = Instances(torch.tensor([[2.0, 1.0, 9.0, 8.0]]), torch.tensor([0.9]), torch.tensor([1]), half, "roi",
                     "probabilities")
    res = fusion(sem, [inst])[0]
    painted = res.segment_map == 1
    # box columns 2..9 (8 px), the 4 columns of a 4-px mask resized to 8: probability >= 0.5 from column 6 on
    assert painted.any(0).nonzero()[:, 0].tolist() == [6, 7, 8, 9]
    assert painted.any(1).nonzero()[:, 0].tolist() == list(range(1, 9))
    assert res.category[0] == TABLE.num_stuff + 1
    binary = fusion(sem, [Instances(inst.boxes, inst.scores, inst.labels, half.bool(), "roi", "binary")])[0]
    assert res.equal(binary)


def test_upsnet_reads_probabilities_as_logits_and_refuses_binary():
    fusion = UPSNetFusion(TABLE, stuff_area_limit=0, pruning=PruningConfig(score_threshold=0.0))
    g = torch.Generator().manual_seed(3)
    sem = torch.randn(1, TABLE.num_classes, 14, 15, generator=g)
    p = torch.rand(3, 14, 15, generator=g)
    p[:, :5] = 0.5  # logit exactly 0: not foreground in the strict pruning test, and adds 0
    a = fusion(sem, [_inst(p, "probabilities")])[0]
    b = fusion(sem, [_inst(probabilities_to_logits(p), "logits")])[0]
    assert a.equal(b)
    with pytest.raises(ValueError, match="from_probabilities"):
        fusion(sem, [_inst(p >= 0.5, "binary")])


def test_upsnet_probability_exactly_half_is_pruned_as_empty():
    """UPSNet's pruning keeps mask pixels with logit > 0: p == 0.5 everywhere is an empty mask, p just above is not."""
    fusion = UPSNetFusion(TABLE, stuff_area_limit=0, unknown=False, pruning=PruningConfig(score_threshold=0.0))
    sem = torch.zeros(1, TABLE.num_classes, 6, 6)
    sem[0, TABLE.num_stuff] = 1.0  # the semantic head agrees with the detector's class
    for value, kept in ((0.5, 0), (F32_HALF_NEIGHBOURS[2], 1)):
        inst = Instances(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.9]), torch.tensor([0]),
                         torch.full((1, 28, 28), value), "roi", "probabilities")
        assert int(fusion(sem, [inst])[0].isthing.sum()) == kept


# ------------------------------------------------------------------------------------------------ validation
def test_binary_masks_passed_as_logits_are_refused():
    m = torch.zeros(1, 28, 28)
    m[0, 5:9, 5:9] = 1.0
    inst = Instances(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([0.9]), torch.tensor([0]), m)
    with pytest.raises(ValueError, match="mask_kind='binary'"):
        HeuristicFusion(TABLE)(torch.zeros(1, 4, 16, 16), [inst])
    inst.mask_kind = "binary"
    HeuristicFusion(TABLE)(torch.zeros(1, 4, 16, 16), [inst])  # the fix works


def test_full_image_masks_without_mask_space_image():
    sem = torch.zeros(1, 4, 40, 50)
    wide = Instances(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([0.9]), torch.tensor([0]),
                     torch.randn(1, 40, 50))
    with pytest.raises(ValueError, match="mask_space='image'"):
        HeuristicFusion(TABLE)(sem, [wide])
    square = Instances(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([0.9]), torch.tensor([0]),
                       torch.randn(1, 40, 40))
    with pytest.warns(UserWarning, match="mask_space='image'"):
        HeuristicFusion(TABLE)(torch.zeros(1, 4, 40, 40), [square])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HeuristicFusion(TABLE)(torch.zeros(1, 4, 40, 40), [Instances(square.boxes, square.scores, square.labels,
                                                                     square.mask_logits, "image")])


@pytest.mark.parametrize(("kind", "masks", "match"), [
    ("probabilities", torch.full((1, 4, 4), 1.5), r"\[0, 1\]"),
    ("probabilities", torch.full((1, 4, 4), -0.1), r"\[0, 1\]"),
    ("binary", torch.full((1, 4, 4), 0.5), "only 0 and 1"),
    ("logits", torch.ones(1, 4, 4, dtype=torch.bool), "mask_kind='binary'"),
    ("logits", torch.full((1, 4, 4), float("nan")), "NaN"),
    ("probabilities", torch.full((1, 4, 4), float("inf")), "NaN or inf"),
    ("sigmoid", torch.zeros(1, 4, 4), "mask_kind must be"),
])
def test_mask_values_must_fit_their_kind(kind, masks, match):
    inst = Instances(torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.tensor([0.9]), torch.tensor([0]), masks, "roi", kind)
    with pytest.raises(ValueError, match=match):
        inst.validate(TABLE.num_things, (8, 8))


def test_kind_survives_indexing_and_moves():
    inst = Instances.from_probabilities(torch.rand(3, 5, 6), torch.rand(3), torch.tensor([0, 1, 0]))
    assert inst[1:].mask_kind == "probabilities" and inst.to("cpu").mask_kind == "probabilities"
    assert inst.mask_space == "image"


# ---------------------------------------------------------------------------------------------- derived boxes
def test_boxes_from_masks_fixture():
    m = torch.zeros(3, 5, 7, dtype=torch.bool)
    m[0, 1:3, 2:6] = True
    m[1, 4, 0] = True
    inst = Instances.from_binary(m, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1]))
    assert inst.boxes.tolist() == [[2.0, 1.0, 5.0, 2.0], [0.0, 4.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="ROI masks need their boxes"):
        Instances.from_binary(m, torch.ones(3), torch.zeros(3, dtype=torch.int64), mask_space="roi")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_boxes_from_masks_are_tight(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(2, h, w, generator=g) ** 4
    boxes = boxes_from_masks(p, "probabilities")
    for k in range(2):
        ys, xs = torch.nonzero(p[k] >= 0.5, as_tuple=True)
        if ys.numel() == 0:
            assert boxes[k].tolist() == [0.0, 0.0, 0.0, 0.0]
        else:
            assert boxes[k].tolist() == [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
    assert torch.equal(boxes, boxes_from_masks(probabilities_to_logits(p), "logits"))


def test_detection_ap_reads_every_kind():
    """AP's binary masks (probability > 0.5, logit > 0) do not depend on the kind the masks are given in."""
    from panoptic.evaluation.detection import DetectionAP

    g = torch.Generator().manual_seed(9)
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [3.0, 2.0, 12.0, 11.0], [7.0, 6.0, 16.0, 15.0]])  # 10x10 paste boxes
    labels = torch.zeros(3, dtype=torch.long)
    for space, shape in (("roi", (3, 10, 10)), ("image", (3, 16, 17))):  # no resize: the decision alone
        p = torch.rand(*shape, generator=g)
        p[:, :3] = 0.5
        masks = {"probabilities": p, "logits": probabilities_to_logits(p), "binary": p > 0.5}
        got = {k: DetectionAP._binary_masks(Instances(boxes, torch.ones(3), labels, m, space, k), (16, 17))
               for k, m in masks.items()}
        for k in ("logits", "binary"):
            assert all(np.array_equal(a, b) for a, b in zip(got["probabilities"], got[k]))
        if space == "image":
            assert all(np.array_equal(a, (f > 0.5).numpy()) for a, f in zip(got["probabilities"], p))
