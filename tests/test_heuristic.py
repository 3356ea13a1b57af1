"""HeuristicFusion: golden toys, hand-computed 8x8 fixtures per rule and flavor, properties, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CategoryTable, Instances, PanopticResult
from panoptic.formats import to_label_divisor
from panoptic.fusion.heuristic import HeuristicFusion
from panoptic.fusion.paste import box_regions, paste_masks

FLAVORS = ("panopticapi", "detectron2", "mmdet", "upsnet")
OVERLAP_FLAVORS = ("panopticapi", "detectron2", "mmdet")

# Semantic grid chars -> contiguous ids of the 2 stuff + 2 things table; expected-map chars -> label-divisor
# codes (category * 1000 + instance number, -1 void).
SEM = {"s": 0, "t": 1, "a": 2, "b": 3}
PAN = {".": -1, "s": 0, "t": 1000, "A": 2001, "B": 2002, "C": 2003, "X": 3001, "Y": 3002}


def make_table(num_stuff: int = 2, num_things: int = 2) -> CategoryTable:
    cats = [{"id": 100 + i, "name": f"stuff{i}", "isthing": 0} for i in range(num_stuff)]
    cats += [{"id": 1 + i, "name": f"thing{i}", "isthing": 1} for i in range(num_things)]
    return CategoryTable.from_coco(cats)


def grid(rows: str, legend: dict[str, int]) -> torch.Tensor:
    """``(H, W)`` int64 map from whitespace-separated rows of legend characters."""
    return torch.tensor([[legend[ch] for ch in row] for row in rows.split()], dtype=torch.int64)


def sem_logits(labels: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """``(1, C, H, W)`` logits whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1)[None].float() * 10.0


def box(y0: int, y1: int, x0: int, x1: int, size: int = 8) -> torch.Tensor:
    """``(size, size)`` bool mask of rows ``y0:y1`` and columns ``x0:x1`` (half-open)."""
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def image_instances(masks: list[torch.Tensor], scores: list[float], labels: list[int],
                    dtype: torch.dtype = torch.float32) -> Instances:
    """Full-image instances with logits +5 inside / -5 outside; boxes cover the whole image."""
    h, w = masks[0].shape if masks else (8, 8)
    n = len(masks)
    logits = torch.stack(masks).float() * 10.0 - 5.0 if n else torch.zeros(0, h, w)
    boxes = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]] * n).reshape(n, 4)
    return Instances(boxes, torch.tensor(scores, dtype=dtype), torch.tensor(labels).long(), logits, "image")


def fuse(fusion: HeuristicFusion, sem: str, inst: Instances) -> PanopticResult:
    res = fusion(sem_logits(grid(sem, SEM), fusion.table.num_classes), [inst])[0]
    res.validate(fusion.table)
    return res


def assert_map(res: PanopticResult, expected: str) -> None:
    got = to_label_divisor(res)
    want = grid(expected, PAN)
    assert torch.equal(got, want), f"\ngot\n{got}\nwant\n{want}"


ALL_S = "ssssssss " * 8


# ------------------------------------------------------------------------------ mmdetection's 2x2 toy
def to_mmdet(res: PanopticResult, table: CategoryTable) -> torch.Tensor:
    """Our result in mmdet's encoding: things, then stuff; ``cat + k * 1000``; void = num_classes."""
    ns, nt = table.num_stuff, table.num_things
    cat = res.semantic_map()
    mm_cat = torch.where(cat >= ns, cat - ns, cat + nt)
    thing_px = res.isthing[(res.segment_map.long() - 1).clamp(min=0)] & (res.segment_map > 0)
    pan = mm_cat + torch.where(thing_px, res.segment_map.long(), 0) * 1000  # things are segments 1..K
    return torch.where(cat < 0, table.num_classes, pan)


def toy_semantic() -> torch.Tensor:
    return sem_logits(torch.tensor([[2, 0], [1, 3]]))


@pytest.mark.parametrize("space", ["image", "roi"])
def test_mmdet_toy(space: str) -> None:
    # Image-space masks give the toy's one-pixel masks exactly; with ROI masks a box [x, y, x, y] pastes
    # into exactly one pixel (inclusive trunc ends) and all-positive logits make it foreground.
    table = make_table()
    masks = [torch.tensor([[1, 0], [0, 0]]).bool(), torch.tensor([[0, 0], [0, 1]]).bool()]
    if space == "image":
        inst = image_instances(masks, [0.8, 0.7], [0, 1])
    else:
        inst = Instances(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), torch.tensor([0.8, 0.7]),
                         torch.tensor([0, 1]), torch.ones(2, 28, 28))
    fusion = HeuristicFusion(table, "mmdet", stuff_area_limit=1, overlap_threshold=0.5)
    res = fusion(toy_semantic(), [inst])[0]
    res.validate(table)
    assert torch.equal(to_mmdet(res, table), torch.tensor([[0 + 1 * 1000, 2], [3, 1 + 2 * 1000]]))
    assert torch.equal(to_label_divisor(res), torch.tensor([[2001, 0], [1000, 3001]]))
    assert torch.equal(res.segment_map, torch.tensor([[1, 3], [4, 2]], dtype=torch.int32))
    assert res.category.tolist() == [2, 3, 0, 1] and res.isthing.tolist() == [True, True, False, False]
    assert res.source.tolist() == [0, 1, -1, -1] and res.area.tolist() == [1, 1, 1, 1]
    assert res.score[:2].tolist() == pytest.approx([0.8, 0.7])
    probs = torch.softmax(toy_semantic()[0], 0)
    assert res.score[2:].tolist() == pytest.approx([probs[0, 0, 1].item(), probs[1, 1, 0].item()])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_mmdet_toy_without_instances(flavor: str) -> None:
    table = make_table()
    res = HeuristicFusion(table, flavor, stuff_area_limit=1)(toy_semantic(), [Instances.empty()])[0]
    res.validate(table)
    assert torch.equal(to_mmdet(res, table), torch.tensor([[4, 2], [3, 4]]))


# ----------------------------------------------------------------------------------- score threshold
@pytest.mark.parametrize(("flavor", "thr"), [("panopticapi", 0.5), ("detectron2", 0.5), ("upsnet", 0.6)])
def test_score_threshold_boundary(flavor: str, thr: float) -> None:
    # float64 scores hit the threshold exactly: score == thr is kept (>=), the next float below is dropped.
    below = math.nextafter(thr, 0.0)
    inst = image_instances([box(0, 2, 0, 8), box(4, 6, 0, 8)], [thr, below], [0, 0], torch.float64)
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "AAAAAAAA " * 2 + "ssssssss " * 6)
    assert res.source.tolist() == [0, -1]


def test_mmdet_has_no_score_threshold_by_default() -> None:
    inst = image_instances([box(0, 2, 0, 8), box(4, 6, 0, 8)], [0.02, 0.01], [0, 0])
    res = fuse(HeuristicFusion(make_table(), "mmdet", stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "AAAAAAAA " * 2 + "ssssssss " * 2 + "BBBBBBBB " * 2 + "ssssssss " * 2)
    res = fuse(HeuristicFusion(make_table(), "mmdet", stuff_area_limit=1, score_threshold=0.02), ALL_S,
               image_instances([box(0, 2, 0, 8), box(4, 6, 0, 8)], [0.02, 0.01], [0, 0], torch.float64))
    assert_map(res, "AAAAAAAA " * 2 + "ssssssss " * 6)


def test_score_threshold_minus_inf_keeps_all() -> None:
    inst = image_instances([box(0, 2, 0, 8)], [0.0], [1])
    res = fuse(HeuristicFusion(make_table(), score_threshold=float("-inf"), stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "XXXXXXXX " * 2 + "ssssssss " * 6)


# ---------------------------------------------------------------------------------- overlap rules
def overlap_scene() -> Instances:
    masks = [
        box(0, 4, 0, 4),  # A, 16 px
        box(2, 4, 2, 6),  # 8 px, 4 on A: ratio 0.5 exactly -> kept (drop only if > 0.5)
        box(0, 3, 3, 6),  # 9 px, 3 on A + 2 on the previous: 5/9 > 0.5 -> dropped
        box(6, 8, 0, 8),  # thing 1, free
    ]
    return image_instances(masks, [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 1])


@pytest.mark.parametrize("flavor", OVERLAP_FLAVORS)
def test_overlap_boundary(flavor: str) -> None:
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, overlap_scene())
    assert_map(res, """
        AAAAssss
        AAAAssss
        AAAABBss
        AAAABBss
        ssssssss
        ssssssss
        XXXXXXXX
        XXXXXXXX""")
    assert res.source.tolist() == [0, 1, 3, -1]


@pytest.mark.parametrize(("flavor", "thr", "kept"), [
    ("panopticapi", 0.625, True), ("mmdet", 0.625, True),
    # 5/8 = 0.625 > 0.6249995 drops it; mmdet's 5/(8 + 1e-5) = 0.62499922 does not exceed it.
    ("panopticapi", 0.6249995, False), ("detectron2", 0.6249995, False), ("mmdet", 0.6249995, True),
])
def test_overlap_epsilon(flavor: str, thr: float, kept: bool) -> None:
    second = box(3, 4, 0, 4) | box(2, 3, 0, 1) | box(4, 5, 0, 3)  # 8 px, 5 on the first
    inst = image_instances([box(0, 4, 0, 4), second], [0.9, 0.8], [0, 1])
    res = fuse(HeuristicFusion(make_table(), flavor, overlap_threshold=thr, stuff_area_limit=1), ALL_S, inst)
    row4 = "XXXsssss" if kept else "ssssssss"
    assert_map(res, "AAAAssss " * 4 + row4 + " ssssssss" * 3)


def test_upsnet_free_fraction_boundary() -> None:
    masks = [
        box(0, 4, 0, 4),  # A, 16 px
        box(3, 5, 1, 6),  # 10 px, 3 on A: free 7/10 = 0.7 -> kept (drop only if < 0.7)
        box(4, 6, 2, 7),  # 10 px, 4 on the previous: free 0.6 -> dropped (panopticapi would keep it)
    ]
    inst = image_instances(masks, [0.9, 0.8, 0.7], [0, 0, 1])
    res = fuse(HeuristicFusion(make_table(), "upsnet", stuff_area_limit=1), ALL_S, inst)
    assert_map(res, """
        AAAAssss
        AAAAssss
        AAAAssss
        AAAABBss
        sBBBBBss
        ssssssss
        ssssssss
        ssssssss""")
    assert res.source.tolist() == [0, 1, -1]


def test_score_order_wins_overlap() -> None:
    # The lower score comes first in the input; the higher score is painted first and keeps the overlap.
    inst = image_instances([box(0, 4, 0, 4), box(2, 6, 2, 6)], [0.7, 0.9], [0, 0])
    expected = """
        BBBBssss
        BBBBssss
        BBAAAAss
        BBAAAAss
        ssAAAAss
        ssAAAAss
        ssssssss
        ssssssss"""
    for flavor in FLAVORS:  # 4/16 overlapped, 12/16 = 0.75 free: kept by every flavor
        res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, inst)
        assert_map(res, expected)
        assert res.source.tolist() == [1, 0, -1]
        assert res.score[:2].tolist() == pytest.approx([0.9, 0.7])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_score_ties_visit_in_the_reference_order(flavor: str) -> None:
    # Many equal scores on one mask: the first visited wins. panopticapi's sorted() is stable (input order),
    # detectron2 and mmdet visit in torch.argsort(-scores) order (not stable on the CPU for long runs of
    # ties), UPSNet's np.argsort(scores)[::-1] puts the later input first.
    n = 3000
    scores = torch.tensor([0.8, 0.9])[torch.arange(n) % 2]
    inst = Instances(torch.tensor([[0.0, 0.0, 3.0, 3.0]]).repeat(n, 1), scores, torch.arange(n) % 2,
                     torch.ones(n, 2, 2))
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, inst)
    first = {"panopticapi": 1, "upsnet": n - 1}.get(flavor, int(torch.argsort(-scores)[0]))
    assert res.source.tolist() == [first, -1]


@pytest.mark.parametrize(("flavor", "winner"), [("panopticapi", 0), ("detectron2", 0), ("mmdet", 0),
                                                ("upsnet", 1)])
def test_two_tied_instances_hand_computed(flavor: str, winner: int) -> None:
    # Two equal scores on one mask: input order wins, except UPSNet's reverse argsort (the later first).
    inst = Instances(torch.tensor([[0.0, 0.0, 3.0, 3.0]] * 2), torch.tensor([0.7, 0.7]), torch.tensor([0, 1]),
                     torch.ones(2, 2, 2))
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, inst)
    assert res.source.tolist() == [winner, -1]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_instance_order_invariance(flavor: str) -> None:
    inst = overlap_scene()
    perm = torch.tensor([2, 0, 3, 1])
    fusion = HeuristicFusion(make_table(), flavor, stuff_area_limit=1)
    a, b = fuse(fusion, ALL_S, inst), fuse(fusion, ALL_S, inst[perm])
    assert a.equal(b, segmentation_only=True)
    assert torch.equal(perm[b.source[b.isthing]], a.source[a.isthing])


# ------------------------------------------------------------------------------------ stuff rules
STUFF_SEM = """
    sssssstt
    tttaaaaa
    aaaaaaaa
    aaaaaaaa
    ssssssbb
    bbbbbbbb
    bbbbbbbb
    bbbbbbbb"""


@pytest.mark.parametrize("flavor", FLAVORS)
def test_stuff_area_boundary_and_uncovered_things(flavor: str) -> None:
    # stuff0: 12 px >= 12 kept; stuff1: 5 px < 12 void; thing pixels without an instance are void,
    # those under the instance become the instance (it also covers semantic thing 'a' pixels only).
    inst = image_instances([box(2, 4, 0, 4)], [0.9], [0])
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=12), STUFF_SEM, inst)
    assert_map(res, """
        ssssss..
        ........
        AAAA....
        AAAA....
        ssssss..
        ........
        ........
        ........""")


@pytest.mark.parametrize(("flavor", "stuff_left"), [(f, f == "upsnet") for f in FLAVORS])
def test_stuff_area_before_or_after_pasting(flavor: str, stuff_left: bool) -> None:
    # The instance covers 2 of stuff0's 12 pixels: 10 left < 12 -> void for panopticapi/d2/mmdet, but
    # UPSNet tests the raw semantic area (12 >= 12) before pasting and keeps the 10 pixels left.
    inst = image_instances([box(0, 1, 0, 2) | box(2, 4, 0, 4)], [0.9], [0])
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=12), STUFF_SEM, inst)
    s = "s" if stuff_left else "."
    assert_map(res, f"""
        AA{s * 4}..
        ........
        AAAA....
        AAAA....
        {s * 6}..
        ........
        ........
        ........""")


def test_upsnet_stuff_filter_ignores_instances_over_small_stuff() -> None:
    # stuff1 has 5 px (< 6) in the raw map: void for UPSNet even though nothing covers it; the instance
    # over it still paints (instances override stuff).
    inst = image_instances([box(1, 2, 0, 2)], [0.9], [1])
    res = fuse(HeuristicFusion(make_table(), "upsnet", stuff_area_limit=6), STUFF_SEM, inst)
    assert_map(res, "ssssss.. XX...... " + "........ " * 2 + "ssssss.. " + "........ " * 3)


# ------------------------------------------------------------------------------------ mask rules
@pytest.mark.parametrize(("flavor", "painted"), [("panopticapi", True), ("detectron2", True),
                                                 ("mmdet", True), ("upsnet", False)])
def test_mask_threshold_boundary(flavor: str, painted: bool) -> None:
    # Logit 0 is probability 0.5: foreground for p >= 0.5, background for UPSNet's logit > 0.
    inst = Instances(torch.tensor([[2.0, 1.0, 4.9, 3.2]]), torch.tensor([0.9]), torch.tensor([0]),
                     torch.zeros(1, 28, 28))
    res = fuse(HeuristicFusion(make_table(), flavor, stuff_area_limit=1), ALL_S, inst)
    # paste box: columns trunc(2.0)..trunc(4.9) = 2..4, rows 1..3 (inclusive)
    block = "ssAAAsss " * 3 if painted else "ssssssss " * 3
    assert_map(res, "ssssssss " + block + "ssssssss " * 4)


def test_custom_mask_threshold() -> None:
    logits = torch.full((2, 8, 8), -5.0)
    logits[0, :2] = 0.80  # sigmoid 0.690 < 0.7
    logits[1, 4:6] = 0.85  # sigmoid 0.7006 >= 0.7
    inst = Instances(torch.tensor([[0.0, 0.0, 7.0, 7.0]] * 2), torch.tensor([0.9, 0.8]), torch.tensor([0, 1]),
                     logits, "image")
    res = fuse(HeuristicFusion(make_table(), mask_threshold=0.7, stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "ssssssss " * 4 + "XXXXXXXX " * 2 + "ssssssss " * 2)


def test_image_mask_used_whole_outside_its_box() -> None:
    inst = image_instances([box(5, 7, 1, 3)], [0.9], [0])
    inst.boxes = torch.tensor([[6.0, 0.0, 7.0, 1.0]])  # the box does not restrict an image-space mask
    res = fuse(HeuristicFusion(make_table(), stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "ssssssss " * 5 + "sAAsssss " * 2 + "ssssssss")


def test_roi_box_partly_outside_is_clipped() -> None:
    inst = Instances(torch.tensor([[-3.0, 5.5, 2.0, 20.0]]), torch.tensor([0.9]), torch.tensor([1]),
                     torch.ones(1, 28, 28))
    res = fuse(HeuristicFusion(make_table(), stuff_area_limit=1), ALL_S, inst)
    assert_map(res, "ssssssss " * 5 + "XXXsssss " * 3)


# ---------------------------------------------------------------------------------- small shapes
@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_pixel_and_no_stuff(flavor: str) -> None:
    things_only = make_table(num_stuff=0, num_things=2)
    inst = Instances(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([0.95]), torch.tensor([1]),
                     torch.ones(1, 28, 28))
    res = HeuristicFusion(things_only, flavor)(torch.zeros(1, 2, 1, 1), [inst])[0]
    res.validate(things_only)
    assert res.category.tolist() == [1] and res.segment_map.tolist() == [[1]]
    res = HeuristicFusion(things_only, flavor)(torch.zeros(1, 2, 1, 1), [Instances.empty()])[0]
    res.validate(things_only)
    assert res.num_segments == 0 and res.segment_map.tolist() == [[0]]


def test_zero_instances_both_spaces_and_batch() -> None:
    table = make_table()
    empty_image = Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0, 8, 8), "image")
    sem = sem_logits(grid(STUFF_SEM, SEM)).repeat(2, 1, 1, 1)
    out = HeuristicFusion(table, stuff_area_limit=12)(sem, [Instances.empty(), empty_image])
    for res in out:
        res.validate(table)
        assert_map(res, "ssssss.. " + "........ " * 3 + "ssssss.. " + "........ " * 3)


def test_output_size_and_repr() -> None:
    table = make_table()
    fusion = HeuristicFusion(table, "upsnet", stuff_area_limit=1)
    res = fusion(sem_logits(grid(ALL_S, SEM)), [Instances.empty()], output_size=(16, 12))[0]
    assert res.image_size == (16, 12) and res.category.tolist() == [0]
    assert "flavor='upsnet'" in repr(fusion) and "min_free_fraction=0.7" in repr(fusion)


# ---------------------------------------------------------------------------------- bad input
def test_bad_inputs_surface_as_value_errors() -> None:
    table = make_table()
    fusion = HeuristicFusion(table)
    sem = sem_logits(grid(ALL_S, SEM))
    good = Instances(torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.tensor([0.9]), torch.tensor([0]),
                     torch.ones(1, 28, 28))
    with pytest.raises(ValueError, match="channels"):
        fusion(torch.zeros(1, 5, 8, 8), [good])
    bad_sem = sem.clone()
    bad_sem[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fusion(bad_sem, [good])
    for value in (float("inf"), float("-inf")):  # -inf is never a maximum, and is still rejected
        bad_sem = sem.clone()
        bad_sem[0, 3, 5, 6] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            fusion(bad_sem, [good])
        bad_big = torch.zeros(1, 4, 32, 32)  # a 32 -> 8 resize never reads (0, 0): checked before resizing
        bad_big[0, 2, 0, 0] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            fusion(bad_big, [Instances.empty()], output_size=(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        fusion(sem, [Instances(good.boxes, good.scores, good.labels, torch.full((1, 28, 28), float("nan")))])
    with pytest.raises(ValueError, match="labels"):
        fusion(sem, [Instances(good.boxes, good.scores, torch.tensor([2]), good.mask_logits)])
    with pytest.raises(ValueError, match="degenerate"):
        flipped = torch.tensor([[3.0, 0.0, 1.0, 3.0]])
        fusion(sem, [Instances(flipped, good.scores, good.labels, good.mask_logits)])
    with pytest.raises(ValueError, match="batch"):
        fusion(sem, [good, good])


@pytest.mark.parametrize("kwargs", [
    {"flavor": "kirillov"},
    {"flavor": "upsnet", "overlap_threshold": 0.3},
    {"flavor": "panopticapi", "min_free_fraction": 0.7},
    {"mask_threshold": 0.0},
    {"mask_threshold": 1.0},
    {"overlap_threshold": float("nan")},
    {"score_threshold": float("nan")},
    {"stuff_area_limit": -1},
    {"stuff_area_limit": "big"},
])
def test_bad_construction(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HeuristicFusion(make_table(), **kwargs)


# ------------------------------------------------------------------- properties vs a dense oracle
def dense_masks(inst: Instances, fusion: HeuristicFusion, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` bool binary masks, ROI masks pasted into a canvas that is background outside boxes."""
    if inst.mask_space == "image":
        logits = inst.mask_logits
    else:
        logits = torch.full((len(inst), *size), -1e4)
        regions = box_regions(inst.boxes, size)
        pasted = paste_masks(inst.mask_logits, regions)
        for i, ((y0, y1, x0, x1), loc) in enumerate(zip(regions.paste, pasted, strict=True)):
            logits[i, y0:y1, x0:x1] = loc
    t = math.log(fusion.mask_threshold / (1 - fusion.mask_threshold))
    return (logits > t if fusion.flavor == "upsnet" else logits >= t).numpy()


def dense_fuse(fusion: HeuristicFusion, sem: np.ndarray, masks: np.ndarray, scores: list[float],
               labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rules, restated with full-image numpy masks: per-pixel (category, source), -1 = void / stuff."""
    ns, upsnet = fusion.table.num_stuff, fusion.flavor == "upsnet"
    eps = 1e-5 if fusion.flavor == "mmdet" else 0.0
    cat, src = np.full(sem.shape, -1), np.full(sem.shape, -1)
    painted = np.zeros(sem.shape, dtype=bool)
    if fusion.flavor in ("detectron2", "mmdet"):  # torch.argsort(-scores), as they call it
        order = torch.argsort(-torch.tensor(scores, dtype=torch.float32)).tolist()
    elif upsnet:  # np.argsort(scores)[::-1] with a stable sort: equal scores the later first
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], -j))
    else:  # Python's stable sorted(key=-score)
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
    for i in order:
        if fusion.score_threshold is not None and scores[i] < fusion.score_threshold:
            continue
        area = int(masks[i].sum())
        inter = int((masks[i] & painted).sum())
        if area == 0:
            continue
        if upsnet and (area - inter) / area < fusion.min_free_fraction:
            continue
        if not upsnet and inter / (area + eps) > fusion.overlap_threshold:
            continue
        new = masks[i] & ~painted
        cat[new], src[new] = ns + labels[i], i
        painted |= new
    for c in range(ns):
        region = (sem == c) & ~painted
        if int(((sem == c) if upsnet else region).sum()) >= fusion.stuff_area_limit:
            cat[region] = c
    return cat, src


@st.composite
def scenes(draw: st.DrawFn) -> tuple[HeuristicFusion, torch.Tensor, Instances]:
    ns = draw(st.integers(0, 3))
    nt = draw(st.integers(0 if ns else 1, 3))
    table = make_table(ns, nt)
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    n = draw(st.integers(0, 7)) if nt else 0
    flavor = draw(st.sampled_from(FLAVORS))
    kw = {"stuff_area_limit": draw(st.sampled_from([0, 1, 3, 8, 20]))}
    if draw(st.booleans()):
        kw["score_threshold"] = draw(st.sampled_from([0.3, 0.5, 0.7]))
    key = "min_free_fraction" if flavor == "upsnet" else "overlap_threshold"
    if draw(st.booleans()):
        kw[key] = draw(st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0]))
    fusion = HeuristicFusion(table, flavor, **kw)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sem = torch.randn(1, table.num_classes, h, w, generator=g) * 3
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 2.0, h + 2.0]) - 2
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w + 0.0, h + 0.0])
    boxes = torch.cat([xy, xy + wh], 1).clamp(min=0)
    scores = torch.tensor([0.2, 0.3, 0.5, 0.7, 0.9])[torch.randint(0, 5, (n,), generator=g)]
    labels = torch.randint(0, max(nt, 1), (n,), generator=g)
    if draw(st.booleans()):
        inst = Instances(boxes, scores, labels, torch.randn(n, 6, 6, generator=g) * 3 + 1)
    else:
        inst = Instances(boxes, scores, labels, torch.randn(n, h, w, generator=g) * 3, "image")
    return fusion, sem, inst


@settings(max_examples=400, deadline=None)
@given(scenes())
def test_properties_and_dense_oracle(scene: tuple[HeuristicFusion, torch.Tensor, Instances]) -> None:
    fusion, sem, inst = scene
    table = fusion.table
    if len(inst) and bool(((inst.boxes[:, 0] >= sem.shape[3]) | (inst.boxes[:, 1] >= sem.shape[2])).all()):
        return  # every box outside the frame is rejected by validation (tested above)
    res = fusion(sem, [inst])[0]
    res.validate(table)  # no overlap, contiguous ids, areas == pixel counts, one stuff segment per class
    thing = res.isthing
    assert torch.equal(res.source < 0, ~thing)
    assert res.source[thing].unique().numel() == int(thing.sum())
    assert torch.equal(res.category[thing], inst.labels[res.source[thing]] + table.num_stuff)
    assert torch.equal(res.score[thing], inst.scores[res.source[thing]])
    cat, src = dense_fuse(fusion, sem[0].argmax(0).numpy(), dense_masks(inst, fusion, res.image_size),
                          inst.scores.tolist(), inst.labels.tolist())
    src_lut = torch.cat([torch.tensor([-1]), res.source])
    assert np.array_equal(res.semantic_map().numpy(), cat)
    assert np.array_equal(src_lut[res.segment_map.long()].numpy(), src)


@settings(max_examples=100, deadline=None)
@given(scenes(), st.randoms(use_true_random=False))
def test_permuting_instances_with_distinct_scores(scene: tuple, rnd) -> None:
    fusion, sem, inst = scene
    if len(inst) and bool(((inst.boxes[:, 0] >= sem.shape[3]) | (inst.boxes[:, 1] >= sem.shape[2])).all()):
        return
    order, perm = list(range(len(inst))), list(range(len(inst)))
    rnd.shuffle(order)
    rnd.shuffle(perm)
    inst.scores = torch.linspace(0.95, 0.05, len(inst))[torch.tensor(order, dtype=torch.int64)]  # distinct
    perm_t = torch.tensor(perm, dtype=torch.int64)
    a, b = fusion(sem, [inst])[0], fusion(sem, [inst[perm_t]])[0]
    assert a.equal(b, segmentation_only=True)
    assert torch.equal(perm_t[b.source[b.isthing]], a.source[a.isthing])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flavor", FLAVORS)
def test_cuda_matches_cpu(flavor: str) -> None:
    g = torch.Generator().manual_seed(0)
    table = make_table(3, 3)
    fusion = HeuristicFusion(table, flavor, stuff_area_limit=50)
    sem = torch.randn(2, 6, 48, 64, generator=g)
    xy = torch.rand(12, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 20], 1)
    roi = Instances(boxes, torch.rand(12, generator=g), torch.randint(0, 3, (12,), generator=g),
                    torch.randn(12, 28, 28, generator=g))
    image = Instances(boxes, roi.scores, roi.labels, torch.randn(12, 48, 64, generator=g), "image")
    cpu = fusion(sem, [roi, image])
    gpu = fusion.cuda()(sem.cuda(), [roi.to("cuda"), image.to("cuda")])
    for a, b in zip(cpu, gpu, strict=True):
        assert a.equal(b.to("cpu"), segmentation_only=True) and torch.equal(a.source, b.source.cpu())


# ------------------------------------------------------------------------- channel reductions
@pytest.mark.parametrize("num_first", [0, 1, 2, 11, 23, 24, 30])
@pytest.mark.parametrize("extra", [0, 8])
def test_first_argmax_keys_equals_argmax_with_ties(num_first: int, extra: int) -> None:
    # Integer logits make ties common; -0.0 and 0.0 tie too. 24+ channels take the fallback path. Several
    # row bands (the last one short) and a non-contiguous input.
    from panoptic import ops
    from panoptic._ops import first_argmax_keys

    c = max(num_first + extra, 1)
    g = torch.Generator().manual_seed(num_first * 31 + extra)
    x = torch.randint(-3, 3, (c, 300, 500), generator=g).float()[:, :, ::2]
    x[0, 0, :5] = -0.0
    a = x.argmax(0)
    expected = torch.where(a < num_first, a, num_first)
    for name in ("auto", "torch"):
        out = torch.empty(300, 250, dtype=torch.int32)
        with ops.backend(name):
            first_argmax_keys(x, num_first, out)
        assert torch.equal(out.long(), expected)



@pytest.mark.parametrize("channels", [1, 5, 24, 25, 60])
def test_first_max_equals_max_with_ties(channels: int) -> None:
    # Up to 24 channels amax plus the exact power-of-two sum, beyond them torch.max: both as torch.max(0).
    from panoptic._ops.argmax import first_max

    g = torch.Generator().manual_seed(channels)
    x = torch.randint(-2, 2, (channels, 40, 30), generator=g).float()
    values, index = first_max(x, dtype=torch.int32)
    assert torch.equal(values, x.amax(0)) and torch.equal(index.long(), x.argmax(0)) and index.dtype == torch.int32
    values, index = first_max(x[:, ::2, 1:])  # strided
    assert torch.equal(values, x[:, ::2, 1:].amax(0)) and torch.equal(index, x[:, ::2, 1:].argmax(0))

def test_huge_finite_logits_are_accepted() -> None:
    # Finite logits whose sum overflows float32 are valid input (the fast finiteness check must not reject them).
    sem = sem_logits(grid(ALL_S, SEM)) * 3.0e37
    res = HeuristicFusion(make_table(), stuff_area_limit=1)(sem, [Instances.empty()])[0]
    assert res.area.tolist() == [64]


# ------------------------------------------------------------------------ detectron2's semantic layout
def test_detectron2_layout_leaves_a_things_stuff_tie_void() -> None:
    # 1x3, 2 stuff: detectron2's channels [things, stuff0, stuff1]. Pixel 0: things = stuff0 = 1 (tie: its
    # argmax picks things, so the pixel is void); pixel 1: stuff0; pixel 2: stuff1.
    table = make_table()
    native = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 2.0, 0.0]], [[0.0, 0.0, 3.0]]])[None]
    fusion = HeuristicFusion(table, "detectron2", stuff_area_limit=0, semantic_layout="detectron2")
    res = fusion(native, [Instances.empty()])[0]
    assert res.semantic_map().tolist() == [[-1, 0, 1]]
    # The same logits in our stuff-first layout (things copied to both thing channels): the tie goes to stuff.
    ours = torch.cat([native[:, 1:], native[:, :1], native[:, :1]], 1)
    res = HeuristicFusion(table, "detectron2", stuff_area_limit=0)(ours, [Instances.empty()])[0]
    assert res.semantic_map().tolist() == [[0, 0, 1]]


def test_detectron2_layout_is_resized_then_paints_instances() -> None:
    table = make_table()
    native = torch.zeros(1, 3, 4, 4)
    native[0, 0, :2] = 5.0  # things on the top half, stuff0 below
    native[0, 1, 2:] = 5.0
    inst = image_instances([box(0, 2, 0, 8)], [0.9], [1])
    fusion = HeuristicFusion(table, "detectron2", stuff_area_limit=0, semantic_layout="detectron2")
    res = fusion(native, [inst], output_size=(8, 8))[0]
    assert_map(res, "XXXXXXXX " * 2 + "........ " * 2 + "ssssssss " * 4)
    assert float(res.score[0]) == pytest.approx(0.9) and 0 < float(res.score[1]) <= 1  # stuff: a probability


def test_detectron2_layout_checks_its_channels_and_flavor() -> None:
    table = make_table()
    fusion = HeuristicFusion(table, "detectron2", semantic_layout="detectron2")
    with pytest.raises(ValueError, match=r"S \+ 1 = 3.*channel 0 the merged things"):
        fusion(torch.zeros(1, 4, 2, 2), [Instances.empty()])
    with pytest.raises(ValueError, match="flavor='detectron2'"):
        HeuristicFusion(table, "panopticapi", semantic_layout="detectron2")
    with pytest.raises(ValueError, match="semantic_layout must be"):
        HeuristicFusion(table, "detectron2", semantic_layout="things_first")  # type: ignore[arg-type]
