"""CategoryTable, PanopticResult invariants and the format bridges (lossless round trips, clear errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import result_from_labels, tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import Category, CategoryTable, Instances
from panoptic.formats import (
    from_coco,
    from_label_divisor,
    from_pairs,
    id2rgb,
    rgb2id,
    segment_bboxes,
    to_coco,
    to_label_divisor,
    to_pairs,
)

# ------------------------------------------------------------------------------------ CategoryTable


def test_table_orders_stuff_first_and_maps_ids():
    table = CategoryTable.from_coco([
        {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 92, "name": "banner", "isthing": 0},
        {"id": 3, "name": "car", "isthing": 1},
        {"id": 200, "name": "wall", "isthing": 0},
    ])
    assert table.names == ("banner", "wall", "person", "car")
    assert (table.num_stuff, table.num_things, table.num_classes) == (2, 2, 4)
    assert [table.to_contiguous(i) for i in (92, 200, 1, 3)] == [0, 1, 2, 3]
    assert [table.to_dataset(k) for k in range(4)] == [92, 200, 1, 3]
    assert table.thing_to_contiguous(1) == 3
    assert table.isthing_tensor().tolist() == [False, False, True, True]
    assert table.categories[2].color == (220, 20, 60)
    assert CategoryTable.from_coco(table.to_coco()) == table


@pytest.mark.parametrize(
    ("cats", "match"),
    [
        ([], "at least one category"),
        ([{"id": 1, "isthing": 0}, {"id": 1, "isthing": 1}], "duplicate category ids"),
        ([{"id": 1, "name": "x"}], "'isthing'"),
        ([{"name": "x", "isthing": 0}], "has no 'id'"),
        ([{"id": 1, "isthing": 2}], "0/1"),
        ([{"id": 1, "isthing": 0, "color": [1, 2]}], "'color'"),
    ],
)
def test_table_validation_names_the_fix(cats, match):
    with pytest.raises(ValueError, match=match):
        CategoryTable.from_coco(cats)


def test_table_unknown_id_and_json_loading(tmp_path):
    table = tiny_table()
    with pytest.raises(ValueError, match="unknown category id 55"):
        table.to_contiguous(55)
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps({"categories": table.to_coco(), "annotations": []}))
    assert CategoryTable.from_json(path) == table
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read categories"):
        CategoryTable.from_json(path)
    assert len(CategoryTable.cityscapes()) == 19 and CategoryTable.cityscapes().num_stuff == 11
    assert CategoryTable([Category(5, "a", False, (1, 2, 3))]).names == ("a",)


# ---------------------------------------------------------------------------------------- Instances


def test_instances_subset_and_empty():
    inst = Instances(torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]), torch.tensor([0.9, 0.5]), torch.tensor([0, 1]),
                     torch.zeros(2, 28, 28))
    assert len(inst[torch.tensor([False, True])]) == 1
    assert len(Instances.empty()) == 0
    Instances.empty().validate(num_things=1)
    with pytest.raises(ValueError, match="float logits"):
        Instances(inst.boxes, inst.scores, inst.labels, torch.zeros(2, 28, 28, dtype=torch.int64)).validate(2)
    with pytest.raises(ValueError, match="mask_space"):
        Instances(inst.boxes, inst.scores, inst.labels, inst.mask_logits, "full").validate(2)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- PanopticResult


TABLE = tiny_table(2, 2)


def sample_result():
    labels = torch.tensor([[0, 0, 2, 2], [0, 3, 3, -1], [1, 1, 4, 4]])
    return result_from_labels(labels, TABLE, [0, 1, 2, 2, 3], crowd=[False, False, False, False, True])


def test_result_validate_detects_broken_invariants():
    res = sample_result()
    res.validate(TABLE)
    assert res.num_segments == 5 and res.area.tolist() == [3, 2, 2, 2, 2]
    bad = sample_result()
    bad.area = bad.area + 1
    with pytest.raises(ValueError, match="areas differ"):
        bad.validate()
    bad = sample_result()
    bad.unknown_mask[0, 0] = True
    with pytest.raises(ValueError, match="unknown pixels must be void"):
        bad.validate()
    bad = sample_result()
    bad.isthing[0] = True
    with pytest.raises(ValueError, match="isthing"):
        bad.validate(TABLE)


def test_segment_bboxes_inclusive_extent():
    res = sample_result()
    assert segment_bboxes(res.segment_map, res.num_segments).tolist() == [
        [0, 0, 2, 2], [0, 2, 2, 1], [2, 0, 2, 1], [1, 1, 2, 1], [2, 2, 2, 1]]


def test_label_divisor_encoding_hand_computed():
    res = sample_result()
    enc = to_label_divisor(res, label_divisor=1000)
    # stuff: cat*1000; things numbered per category from 1; crowd thing: instance 0; void -1
    assert enc.tolist() == [[0, 0, 2001, 2001], [0, 2002, 2002, -1], [1000, 1000, 3000, 3000]]
    dataset = to_label_divisor(res, table=TABLE)
    assert dataset[0, 2].item() == 101 * 1000 + 1
    with pytest.raises(ValueError, match="larger label_divisor"):
        to_label_divisor(res, label_divisor=2)


def test_unknown_codes_round_trip():
    res = sample_result()
    res.unknown_mask[1, 3] = True
    enc = to_label_divisor(res, unknown=-2)
    assert enc[1, 3].item() == -2
    back = from_label_divisor(enc, TABLE, unknown=-2)
    assert back.equal(res, segmentation_only=True)


def test_coco_import_errors_name_the_problem():
    res = sample_result()
    png, info = to_coco(res, TABLE)
    with pytest.raises(ValueError, match=r"PNG ids \[3\] are not in segments_info"):
        from_coco(png, [s for s in info if s["id"] != 3], TABLE, name="x.png")
    extra = [*info, {"id": 99, "category_id": 1}]
    with pytest.raises(ValueError, match="have no pixel"):
        from_coco(png, extra, TABLE)
    wrong = [dict(s, category_id=7) if s["id"] == 1 else s for s in info]
    with pytest.raises(ValueError, match="unknown category id 7"):
        from_coco(png, wrong, TABLE)
    with pytest.raises(ValueError, match="segment id 0 is VOID"):
        from_coco(png, [dict(info[0], id=0)], TABLE)
    with pytest.raises(ValueError, match="stuff pixels must have instance 0"):
        from_label_divisor(torch.tensor([[5]]), TABLE)
    two_crowds = result_from_labels(torch.tensor([[0, 1]]), TABLE, [2, 2], crowd=[True, True])
    with pytest.raises(ValueError, match="would merge"):
        to_label_divisor(two_crowds)
    # a negative instance id on a thing pixel (it was read as another category and reported as a stuff pixel)
    with pytest.raises(ValueError, match=r"instance ids must be >= 0 \(0 for stuff and crowd\), got \[-1\]"):
        from_pairs(torch.tensor([[[2, -1], [2, 1]]]), TABLE)
    assert from_pairs(torch.tensor([[[-1, -1], [2, 1]]]), TABLE).num_segments == 1  # void pixels may hold anything
    # a divisor that is not a positive integer (0 raised a raw ZeroDivisionError on import)
    for divisor in (0, -5, 2.5):
        with pytest.raises(ValueError, match="label_divisor must be a positive integer"):
            from_label_divisor(torch.tensor([[2001]]), TABLE, label_divisor=divisor)
        with pytest.raises(ValueError, match="label_divisor must be a positive integer"):
            to_label_divisor(res, label_divisor=divisor)
    # float maps must hold whole numbers (2001.5 was truncated to 2001)
    assert from_label_divisor(torch.tensor([[2001.0, 0.0]]), TABLE).num_segments == 2
    for bad in (torch.tensor([[2001.5]]), torch.tensor([[float("nan")]])):
        with pytest.raises(ValueError, match="must hold integer ids"):
            from_label_divisor(bad, TABLE)
    with pytest.raises(ValueError, match="must hold integer ids"):
        from_pairs(torch.tensor([[[2.0, 0.5]]]), TABLE)
    # segments_info entries without their keys (a raw KeyError before)
    for entry in ({"category_id": 1}, {"id": 1}, [1, 1]):
        with pytest.raises(ValueError, match=r"x.png: segments_info\[0\] = .* needs 'id' and 'category_id'"):
            from_coco(png, [entry], TABLE, name="x.png")


@st.composite
def results(draw):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    k = draw(st.integers(0, 8))
    cats = draw(st.lists(st.integers(0, TABLE.num_classes - 1), min_size=k, max_size=k))
    # at most one segment per stuff category (the library's guarantee for fusion outputs)
    seen: set[int] = set()
    cats = [c for c in cats if TABLE.isthing(c) or not (c in seen or seen.add(c))]
    crowd_seen: set[int] = set()
    crowd = [TABLE.isthing(c) and c not in crowd_seen and draw(st.booleans()) and not crowd_seen.add(c)
             for c in cats]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, max(len(cats), 1), (h, w), generator=g)
    if not cats:
        labels.fill_(-1)
    res = result_from_labels(labels, TABLE, cats, crowd)
    res.score = torch.rand(res.num_segments, generator=g)
    return res


@settings(max_examples=80, deadline=None)
@given(results())
def test_round_trips_are_lossless(res):
    png, info = to_coco(res, TABLE)
    assert png.dtype == np.uint8 and png.shape == (*res.image_size, 3)
    assert res.equal(from_coco(png, json.loads(json.dumps(info)), TABLE))  # scores and sources survive JSON
    # (category, instance) forms order segments by category: compare the induced segmentation.
    for back in (from_label_divisor(to_label_divisor(res), TABLE),
                 from_label_divisor(to_label_divisor(res, table=TABLE), TABLE, dataset_ids=True),
                 from_pairs(to_pairs(res), TABLE)):
        assert torch.equal(back.semantic_map(), res.semantic_map())
        assert torch.equal(to_pairs(back), to_pairs(res)) or _same_partition(back, res)
        assert sorted(back.area.tolist()) == sorted(res.area.tolist())
        assert int(back.iscrowd.sum()) == int(res.iscrowd.sum())


def _same_partition(a, b) -> bool:
    joint = torch.unique(a.segment_map.long() * 1000 + b.segment_map.long())
    return joint.numel() == a.num_segments + 1 - int(not (a.segment_map == 0).any()) == \
        b.num_segments + 1 - int(not (b.segment_map == 0).any())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**24 - 1))
def test_rgb_id_bijection(v):
    arr = np.array([[v, 0]], dtype=np.uint32)
    assert rgb2id(id2rgb(arr)).tolist() == arr.tolist()
