"""``panoptic.interop``: detectron2, mmdetection 3.x and torchvision outputs in and out, on look-alike objects.

No framework is installed: the outputs are built from tensors with the frameworks' attribute names. Each
framework's own fusion is re-expressed below as a small function written from reading its code
(detectron2 ``combine_semantic_and_instance_outputs``, mmdet ``HeuristicFusionHead``), and the adapters plus
our fusion must give exactly its output, in its own format, on random scenes.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CategoryTable, HeuristicFusion, Instances, UPSNetFusion
from panoptic.fusion.pruning import PruningConfig
from panoptic.interop import (
    Detectron2Metadata,
    MMDetClasses,
    from_detectron2,
    from_detectron2_panoptic,
    from_mmdet,
    from_mmdet_panoptic,
    from_torchvision,
    to_detectron2,
    to_mmdet,
)
from panoptic.interop.common import expand_things_channel
from panoptic.interop.mmdet import INSTANCE_OFFSET

# Dataset ids unlike any contiguous id; stuff and things interleaved in the list.
TABLE = CategoryTable.from_coco([
    {"id": 7, "name": "person", "isthing": 1}, {"id": 120, "name": "sky", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1}, {"id": 140, "name": "road", "isthing": 0},
    {"id": 18, "name": "dog", "isthing": 1}, {"id": 133, "name": "grass", "isthing": 0},
])
NS, NT = TABLE.num_stuff, TABLE.num_things  # stuff in table order: sky, road, grass; things: person, car, dog
# detectron2 metadata with its own contiguous orders (things shuffled; stuff 1..S in table order unless shuffled)
D2_META = {"thing_dataset_id_to_contiguous_id": {18: 0, 7: 1, 3: 2},
           "stuff_dataset_id_to_contiguous_id": {120: 1, 140: 2, 133: 3, 0: 0}}
D2_META_SHUFFLED = {"thing_dataset_id_to_contiguous_id": {18: 0, 7: 1, 3: 2},
                    "stuff_dataset_id_to_contiguous_id": {133: 1, 120: 2, 140: 3, 0: 0}}
# mmdet classes: things first, in mmdet's own order. Ties between stuff logits go to the first stuff channel in the
# *table's* order, so exact parity on tied logits needs the table's stuff order (the default conventions give it);
# the shuffled stuff order is tested on continuous logits.
MM_CLASSES = ["dog", "person", "car", "sky", "road", "grass"]
MM_CLASSES_SHUFFLED = ["dog", "person", "car", "road", "grass", "sky"]

HAS_LAYOUT = "semantic_layout" in inspect.signature(HeuristicFusion.__init__).parameters
NEEDS_LAYOUT = pytest.mark.skipif(not HAS_LAYOUT, reason="HeuristicFusion(semantic_layout=...) is not on this branch "
                                  "yet (branch `parity` adds it)")


# ---------------------------------------------------------------------------------------------- random scenes
def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """``(n, h, w)`` bool: random rectangles with random holes (some empty, some crossing the border)."""
    m = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        y0, x0 = rng.integers(-2, h), rng.integers(-2, w)
        y1, x1 = y0 + rng.integers(0, h), x0 + rng.integers(0, w)
        m[k, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        m[k] &= rng.random((h, w)) > 0.2
    return torch.from_numpy(m)


def d2_scene(rng: np.random.Generator, tied_semantics: bool = False):
    """A detectron2-style output of one image: Instances look-alike and ``(S + 1, H, W)`` sem_seg."""
    h, w = int(rng.integers(7, 30)), int(rng.integers(7, 30))
    n = int(rng.integers(0, 8))
    masks = random_masks(rng, n, h, w)
    scores = torch.from_numpy(rng.permutation(np.linspace(0.3, 0.95, 14))[:n].astype(np.float32))
    boxes = torch.from_numpy(rng.uniform(-3, 30, (n, 4)).astype(np.float32)).sort(1).values[:, [0, 2, 1, 3]]
    inst = SimpleNamespace(pred_boxes=SimpleNamespace(tensor=boxes), scores=scores,
                           pred_classes=torch.from_numpy(rng.integers(0, NT, n)), pred_masks=masks)
    if tied_semantics:
        sem = torch.from_numpy(rng.integers(0, 3, (NS + 1, h, w)).astype(np.float32))  # many exact ties
    else:
        sem = torch.from_numpy(rng.normal(size=(NS + 1, h, w)).astype(np.float32))
    return inst, sem


def d2_reference(inst, sem_seg, overlap: float, stuff_area: float, score_thr: float):
    """detectron2's Panoptic FPN combination, re-expressed (semantic argmax over the merged layout; scores sorted
    descending; stop at the first score below the threshold; paste free pixels; stuff by ascending channel)."""
    labels = sem_seg.argmax(0)
    seg = torch.zeros(labels.shape, dtype=torch.int32)
    info = []
    for i in torch.argsort(-inst.scores).tolist():
        score = float(inst.scores[i])
        if score < score_thr:
            break
        mask = inst.pred_masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        inter = int((mask & (seg > 0)).sum())
        if inter / area > overlap:
            continue
        seg[mask & (seg == 0)] = len(info) + 1
        info.append({"id": len(info) + 1, "isthing": True, "score": score,
                     "category_id": int(inst.pred_classes[i]), "instance_id": i})
    for lab in torch.unique(labels).tolist():
        if lab == 0:
            continue
        mask = (labels == lab) & (seg == 0)
        area = int(mask.sum())
        if area < stuff_area:
            continue
        seg[mask] = len(info) + 1
        info.append({"id": len(info) + 1, "isthing": False, "category_id": lab, "area": area})
    return seg, info


def mm_reference(pred, seg_logits, num_things: int, num_classes: int, overlap: float, stuff_area: float):
    """mmdetection 3.x's ``HeuristicFusionHead``, re-expressed (float32 overlap ratio with a 1e-5 term; instance
    ids in paste order; semantic label = argmax + num_things, the merged things channel landing on void)."""
    id_map = torch.zeros(seg_logits.shape[1:], dtype=torch.long)
    kept = []
    for i in torch.argsort(-pred.scores).tolist():
        mask = pred.masks[i]
        area = mask.sum()
        if area == 0:
            continue
        pasted = id_map > 0
        if (mask & pasted).sum() / (area + 1e-5) > overlap:
            continue
        id_map[mask & ~pasted] = len(kept) + 1
        kept.append(int(pred.labels[i]))
    pan = seg_logits.argmax(0) + num_things
    instance_id = 1
    for k, label in enumerate(kept):
        mask = id_map == k + 1
        if mask.sum() == 0:
            continue
        pan[mask] = label + instance_id * INSTANCE_OFFSET
        instance_id += 1
    ids, counts = torch.unique(pan % INSTANCE_OFFSET, return_counts=True)
    small = ids[(ids >= num_things) & (counts < stuff_area)]
    pan[torch.isin(pan, small)] = num_classes
    return pan.int()


def same_segments(a, b) -> bool:
    """Same category per pixel and the same partition into segments, whatever the segment order."""
    links = torch.stack([a.segment_map.flatten(), b.segment_map.flatten()], 1).unique(dim=0)
    return (torch.equal(a.semantic_map(), b.semantic_map())
            and len(links) == len(links[:, 0].unique()) == len(links[:, 1].unique()))


# ------------------------------------------------------------------------------------------------- detectron2
def test_detectron2_through_heuristic_equals_detectron2(ops_backend):
    """200 random scenes (continuous logits: no semantic ties): from_detectron2 -> HeuristicFusion("detectron2")
    -> to_detectron2 gives detectron2's own (panoptic_seg, segments_info), ids and dict order included."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        inst, sem = d2_scene(rng)
        stuff_area = int(rng.integers(0, 12))
        ref_seg, ref_info = d2_reference(inst, sem, 0.5, stuff_area, 0.5)
        inputs = from_detectron2(inst, TABLE, sem_seg=sem, metadata=D2_META, semantic_layout="stuff_first")
        fusion = HeuristicFusion(TABLE, "detectron2", stuff_area_limit=stuff_area)
        res = fusion(inputs.semantic_logits[None], [inputs.instances])[0]
        seg, info = to_detectron2(res, TABLE, D2_META)
        assert torch.equal(seg, ref_seg)
        assert info == ref_info


@NEEDS_LAYOUT
def test_detectron2_native_layout_reproduces_ties():
    """With detectron2's own layout (channel 0 = things), a things logit equal to a stuff logit leaves the pixel
    void, as in detectron2; the adapter hands ``sem_seg`` through untouched."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        inst, sem = d2_scene(rng, tied_semantics=True)
        ref_seg, ref_info = d2_reference(inst, sem, 0.5, 2, 0.5)
        inputs = from_detectron2(inst, TABLE, sem_seg=sem, metadata=D2_META)
        assert inputs.semantic_logits is sem
        fusion = HeuristicFusion(TABLE, flavor="detectron2", semantic_layout="detectron2", stuff_area_limit=2)
        res = fusion(inputs.semantic_logits[None], [inputs.instances])[0]
        seg, info = to_detectron2(res, TABLE, D2_META)
        assert torch.equal(seg, ref_seg) and info == ref_info


def test_detectron2_stuff_order_of_the_metadata():
    """Metadata ordering the stuff channels differently from the table: the channels are reordered, the categories
    come out right, and to/from_detectron2_panoptic use the same maps."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        inst, sem = d2_scene(rng)
        ref_seg, ref_info = d2_reference(inst, sem, 0.5, 3, 0.5)
        ref = from_detectron2_panoptic(ref_seg, ref_info, TABLE, D2_META_SHUFFLED)
        inputs = from_detectron2(inst, TABLE, sem_seg=sem, metadata=D2_META_SHUFFLED)
        assert inputs.semantic_logits.shape[0] == NS + 1
        assert torch.equal(inputs.semantic_logits[1:], sem[[2, 3, 1]])  # sky, road, grass: channels 2, 3, 1
        expanded = from_detectron2(inst, TABLE, sem_seg=sem, metadata=D2_META_SHUFFLED, semantic_layout="stuff_first")
        res = HeuristicFusion(TABLE, "detectron2", stuff_area_limit=3)(expanded.semantic_logits[None],
                                                                       [expanded.instances])[0]
        assert same_segments(res, ref)
        back = from_detectron2_panoptic(*to_detectron2(res, TABLE, D2_META_SHUFFLED), TABLE, D2_META_SHUFFLED)
        assert back.equal(res, segmentation_only=True)
        assert torch.equal(back.score[back.isthing], res.score[res.isthing])
        assert torch.equal(back.source, res.source.where(res.isthing, -1))


def test_detectron2_labels_and_mask_forms():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 4:, 5:] = True
    inst = {"pred_boxes": torch.tensor([[1.0, 1.0, 3.0, 2.0], [5.0, 4.0, 7.0, 5.0]]), "scores": torch.tensor([.9, .8]),
            "pred_classes": torch.tensor([0, 2]), "pred_masks": masks}
    out = from_detectron2(inst, TABLE, metadata=D2_META).instances
    assert out.labels.tolist() == [2, 1]  # contiguous 0 = id 18 (dog, thing index 2), 2 = id 3 (car, index 1)
    assert (out.mask_space, out.mask_kind) == ("image", "binary") and out.mask_logits is masks
    assert from_detectron2(inst, TABLE).instances.labels.tolist() == [0, 2]  # builtin convention: table order
    raw = dict(inst, pred_masks=torch.rand(2, 1, 28, 28))  # do_postprocess=False: ROI probabilities
    out = from_detectron2(raw, TABLE, metadata=Detectron2Metadata.coerce(D2_META, TABLE)).instances
    assert (out.mask_space, out.mask_kind, tuple(out.mask_logits.shape)) == ("roi", "probabilities", (2, 28, 28))
    sem = torch.randn(1, NS + 1, 6, 8)
    res = UPSNetFusion(TABLE, stuff_area_limit=0, pruning=PruningConfig(score_threshold=0.0))(
        expand_things_channel(sem[0], TABLE, 0)[None], [out])[0]
    res.validate(TABLE)


@pytest.mark.parametrize(("change", "match"), [
    ({"pred_classes": torch.tensor([0, 3])}, r"labels \[3\] have no thing"),
    ({"pred_masks": None}, "no 'pred_masks'"),
    ({"pred_masks": torch.zeros(2, 2, 6, 8)}, r"\(N, 1, M, M\)"),
    ({"scores": "high"}, "must be a tensor"),
])
def test_detectron2_input_errors(change, match):
    inst = {"pred_boxes": torch.zeros(2, 4), "scores": torch.ones(2), "pred_classes": torch.tensor([0, 1]),
            "pred_masks": torch.zeros(2, 6, 8, dtype=torch.bool)}
    inst.update(change)
    with pytest.raises(ValueError, match=match):
        from_detectron2(inst, TABLE, metadata=D2_META)


def test_detectron2_metadata_and_semantic_errors():
    inst = {"pred_boxes": torch.zeros(0, 4), "scores": torch.ones(0), "pred_classes": torch.zeros(0, dtype=torch.long),
            "pred_masks": torch.zeros(0, 6, 8, dtype=torch.bool)}
    with pytest.raises(ValueError, match="thing_dataset_id_to_contiguous_id"):
        from_detectron2(inst, TABLE, metadata={"stuff_dataset_id_to_contiguous_id": {}})
    with pytest.raises(ValueError, match="stuff ids"):
        from_detectron2(inst, TABLE, sem_seg=torch.zeros(NS + 1, 6, 8),
                        metadata={**D2_META, "stuff_dataset_id_to_contiguous_id": {120: 1, 140: 2}})
    with pytest.raises(ValueError, match="merged things"):
        from_detectron2(inst, TABLE, sem_seg=torch.zeros(NS + 1, 6, 8),
                        metadata={**D2_META, "stuff_dataset_id_to_contiguous_id": {120: 1, 140: 2, 133: 0}})
    with pytest.raises(ValueError, match=r"\(S \+ 1, H, W\)"):
        from_detectron2(inst, TABLE, sem_seg=torch.zeros(TABLE.num_classes, 6, 8))
    with pytest.raises(ValueError, match="not its argmax"):
        from_detectron2(inst, TABLE, sem_seg=torch.zeros(NS + 1, 6, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="semantic_layout"):
        from_detectron2(inst, TABLE, sem_seg=torch.zeros(NS + 1, 6, 8), semantic_layout="mmdet")


# ------------------------------------------------------------------------------------------------- mmdetection
def mm_scene(rng: np.random.Generator):
    h, w = int(rng.integers(7, 30)), int(rng.integers(7, 30))
    n = int(rng.integers(0, 8))
    masks = random_masks(rng, n, h, w)
    pred = SimpleNamespace(bboxes=torch.zeros(n, 4), labels=torch.from_numpy(rng.integers(0, NT, n)), masks=masks,
                           scores=torch.from_numpy(rng.permutation(np.linspace(0.05, 0.95, 14))[:n].astype(np.float32)))
    seg = torch.from_numpy(rng.integers(0, 3, (NS + 1, h, w)).astype(np.float32))  # ties: mmdet's argmax order
    return SimpleNamespace(pred_instances=pred), seg


def test_mmdet_through_heuristic_equals_mmdet(ops_backend):
    """200 random scenes with many semantic ties: from_mmdet -> HeuristicFusion("mmdet") -> to_mmdet gives
    mmdetection's own ``pan_results``."""
    rng = np.random.default_rng(3)
    cls = MMDetClasses.coerce(MM_CLASSES, TABLE)
    for _ in range(200):
        sample, seg = mm_scene(rng)
        stuff_area = int(rng.integers(0, 12))
        ref = mm_reference(sample.pred_instances, seg, NT, TABLE.num_classes, 0.5, stuff_area)
        inputs = from_mmdet(sample, TABLE, sem_seg=seg, classes=MM_CLASSES)
        res = HeuristicFusion(TABLE, "mmdet", stuff_area_limit=stuff_area)(inputs.semantic_logits[None],
                                                                            [inputs.instances])[0]
        assert torch.equal(to_mmdet(res, TABLE, cls), ref)
        back = from_mmdet_panoptic(ref[None], TABLE, {"classes": MM_CLASSES})
        assert same_segments(back, res) and back.num_segments == res.num_segments


def test_mmdet_stuff_order_of_the_classes():
    """mmdet classes ordering stuff differently from the table (continuous logits): still mmdet's pan_results."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        sample, seg = mm_scene(rng)
        seg = seg + torch.from_numpy(rng.normal(scale=0.1, size=seg.shape).astype(np.float32))  # no ties
        ref = mm_reference(sample.pred_instances, seg, NT, TABLE.num_classes, 0.5, 3)
        inputs = from_mmdet(sample, TABLE, sem_seg=seg, classes=MM_CLASSES_SHUFFLED)
        res = HeuristicFusion(TABLE, "mmdet", stuff_area_limit=3)(inputs.semantic_logits[None], [inputs.instances])[0]
        assert torch.equal(to_mmdet(res, TABLE, MM_CLASSES_SHUFFLED), ref)


def test_mmdet_fields_and_layouts():
    masks = torch.zeros(2, 5, 6)
    masks[0, :2] = 0.9
    masks[1, 3:] = 0.6
    data = {"bboxes": torch.zeros(2, 4), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 2]),
            "masks": masks}
    all_classes = torch.randn(TABLE.num_classes, 5, 6)  # one channel per class, mmdet's label order
    sample = SimpleNamespace(pred_instances=data, pred_sem_seg=SimpleNamespace(sem_seg=all_classes))
    inputs = from_mmdet(sample, TABLE, classes=MM_CLASSES_SHUFFLED)
    assert inputs.instances.labels.tolist() == [2, 1]  # dog, car in table order (person, car, dog)
    assert inputs.instances.mask_kind == "probabilities"
    # table order sky, road, grass, person, car, dog = mmdet labels 5, 3, 4, 1, 2, 0
    assert torch.equal(inputs.semantic_logits, all_classes[[5, 3, 4, 1, 2, 0]])
    merged = torch.randn(NS + 1, 5, 6)  # Panoptic FPN: road, grass, sky (mmdet's stuff order), then things
    assert torch.equal(from_mmdet(data, TABLE, sem_seg=merged, classes=MM_CLASSES_SHUFFLED).semantic_logits,
                       merged[[2, 0, 1, 3, 3, 3]])
    assert from_mmdet(data, TABLE).instances.labels.tolist() == [0, 2]  # default classes: table order
    with pytest.raises(ValueError, match="thing classes first"):
        MMDetClasses.coerce(["road", "dog", "person", "car", "grass", "sky"], TABLE)
    with pytest.raises(ValueError, match="not names"):
        MMDetClasses.coerce(["cat", "person", "car", "road", "grass", "sky"], TABLE)
    with pytest.raises(ValueError, match="not a label map"):
        from_mmdet(data, TABLE, sem_seg=torch.zeros(1, 5, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        from_mmdet(dict(data, labels=torch.tensor([0, 3])), TABLE)
    with pytest.raises(ValueError, match="above num_classes"):
        from_mmdet_panoptic(torch.full((4, 4), 7), TABLE)


def test_mmdet_encoding_fixture():
    """Hand-computed: two things of one class (instance ids 1, 2), a stuff segment (instance 0) and void."""
    from panoptic.segments import assemble_result

    labels = torch.tensor([[0, 0, 2, -1], [1, 1, 2, -1]])
    res = assemble_result(labels, category=torch.tensor([5, 5, 1]), isthing=torch.tensor([True, True, False]),
                          score=torch.tensor([0.9, 0.8, float("nan")]), source=torch.tensor([0, 1, -1]))
    # table: sky, road, grass | person, car, dog; contiguous 5 = dog (mmdet label 0), 1 = road (label 4); void 6
    pan = to_mmdet(res, TABLE, MM_CLASSES)
    assert pan.tolist() == [[1000, 1000, 4, 6], [2000, 2000, 4, 6]] and pan.dtype == torch.int32


# ------------------------------------------------------------------------------------------------- torchvision
def tv_output(rng: np.random.Generator, h: int, w: int, labels: list[int]):
    n = len(labels)
    p = torch.from_numpy(rng.random((n, 1, h, w)).astype(np.float32)) ** 3
    p[p < 0.1] = 0.5  # exact threshold ties
    return {"boxes": boxes_of(p[:, 0] >= 0.5), "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.from_numpy(rng.uniform(0.3, 1.0, n).astype(np.float32)), "masks": p}


def boxes_of(masks: torch.Tensor) -> torch.Tensor:
    from panoptic.structures import boxes_from_masks

    return boxes_from_masks(masks, "binary")


def test_torchvision_probabilities_through_both_fusions(ops_backend):
    """Probability masks keep ``p >= 0.5`` in the heuristic (the same result as the binarised masks) and feed
    UPSNet their logits; the COCO weights' labels are dataset ids."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        h, w = int(rng.integers(6, 25)), int(rng.integers(6, 25))
        out = tv_output(rng, h, w, [int(v) for v in rng.choice([7, 3, 18], int(rng.integers(0, 6)))])
        inst = from_torchvision(out, TABLE)
        assert (inst.mask_space, inst.mask_kind) == ("image", "probabilities")
        assert inst.labels.tolist() == [{7: 0, 3: 1, 18: 2}[v] for v in out["labels"].tolist()]
        sem = torch.randn(1, TABLE.num_classes, h, w)
        fusion = HeuristicFusion(TABLE, stuff_area_limit=2)
        res = fusion(sem, [inst])[0]
        binary = Instances.from_binary(out["masks"][:, 0] >= 0.5, inst.scores, inst.labels, inst.boxes)
        assert res.equal(fusion(sem, [binary])[0])
        UPSNetFusion(TABLE, stuff_area_limit=2)(sem, [inst])[0].validate(TABLE)


def test_torchvision_label_maps_and_errors():
    rng = np.random.default_rng(5)
    out = tv_output(rng, 5, 6, [1, 2])
    assert from_torchvision(out, TABLE, label_to_dataset_id={1: 18, 2: 7}).labels.tolist() == [2, 0]
    assert from_torchvision(out, TABLE, label_to_dataset_id=[0, 3, 18]).labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"labels \[1, 2\] have no thing.*label_to_dataset_id"):
        from_torchvision(out, TABLE)
    with pytest.raises(ValueError, match="stuff category"):
        from_torchvision(out, TABLE, label_to_dataset_id={1: 120, 2: 7})
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        from_torchvision(dict(out, masks=out["masks"][:, 0]), TABLE, label_to_dataset_id={1: 18, 2: 7})
    with pytest.raises(ValueError, match="no 'masks'"):
        from_torchvision({k: v for k, v in out.items() if k != "masks"}, TABLE)


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fusion", [
    HeuristicFusion(TABLE, stuff_area_limit=3),
    UPSNetFusion(TABLE, stuff_area_limit=3, pruning=PruningConfig(score_threshold=0.3)),
], ids=["heuristic", "upsnet"])
def test_round_trips_through_both_formats(fusion):
    rng = np.random.default_rng(6)
    for _ in range(40):
        h, w = int(rng.integers(6, 25)), int(rng.integers(6, 25))
        inst = from_torchvision(tv_output(rng, h, w, [int(v) for v in rng.choice([7, 3, 18], 5)]), TABLE)
        res = fusion(torch.randn(1, TABLE.num_classes, h, w), [inst])[0]
        d2 = from_detectron2_panoptic(*to_detectron2(res, TABLE), TABLE)
        assert not d2.unknown_mask.any()  # the formats have no "unknown": those pixels are void
        res_known = dataclasses.replace(res, unknown_mask=torch.zeros_like(res.unknown_mask))
        assert d2.equal(res_known, segmentation_only=True)
        mm = from_mmdet_panoptic(to_mmdet(res, TABLE), TABLE)
        assert same_segments(mm, res) and mm.num_segments == res.num_segments
        assert torch.equal(to_mmdet(mm, TABLE) == TABLE.num_classes, res.segment_map == 0)


def test_expand_things_channel_fixture_and_errors():
    logits = torch.arange(4.0).reshape(4, 1, 1)  # mmdet: road, grass, sky stuff indices 0..2, things last
    assert expand_things_channel(logits, TABLE, -1, [2, 0, 1]).flatten().tolist() == [2, 0, 1, 3, 3, 3]
    assert expand_things_channel(logits, TABLE, 0).flatten().tolist() == [1, 2, 3, 0, 0, 0]
    with pytest.raises(ValueError, match="each once"):
        expand_things_channel(logits, TABLE, 0, [1, 1, 2])
    with pytest.raises(ValueError, match=r"\(S \+ 1, H, W\)"):
        expand_things_channel(torch.zeros(6, 1, 1), TABLE, 0)


def test_merged_layout_given_to_a_fusion_names_the_fix():
    inst = Instances.empty()
    with pytest.raises(ValueError, match="expand_things_channel"):
        UPSNetFusion(TABLE)(torch.zeros(1, NS + 1, 5, 5), [inst])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.permutations([0, 1, 2]), st.permutations([1, 2, 3]),
       st.permutations(["person", "car", "dog"]), st.permutations(["sky", "road", "grass"]))
def test_formats_round_trip_any_result_and_metadata(seed, thing_order, stuff_order, mm_things, mm_stuff):
    """Property: for any result (random partition, categories, scores) and any framework category order, both
    formats read back to the same segments; detectron2's keeps the segment order and the thing scores."""
    from panoptic.segments import assemble_result

    g = torch.Generator().manual_seed(seed)
    h, w = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
    s = int(torch.randint(1, 8, (1,), generator=g))
    category = torch.randint(0, TABLE.num_classes, (s,), generator=g)
    stuff_seen = set()
    for k in range(s):  # at most one segment per stuff category
        c = int(category[k])
        if c < NS and c in stuff_seen:
            category[k] = NS
        stuff_seen.add(int(category[k]))
    labels = torch.randint(-1, s, (h, w), generator=g)
    present = labels.unique()
    present = present[present >= 0]
    remap = torch.full((s,), -1, dtype=torch.long)
    remap[present] = torch.arange(present.numel())
    labels = torch.where(labels >= 0, remap[labels.clamp(min=0)], -1)
    category = category[present]
    res = assemble_result(labels, category=category, isthing=category >= NS,
                          score=torch.rand(category.numel(), generator=g), source=torch.arange(category.numel()))
    things = [7, 3, 18]
    stuff = [120, 140, 133]
    meta = {"thing_dataset_id_to_contiguous_id": {things[i]: k for k, i in enumerate(thing_order)},
            "stuff_dataset_id_to_contiguous_id": {stuff[i - 1]: k + 1 for k, i in enumerate(stuff_order)}}
    d2 = from_detectron2_panoptic(*to_detectron2(res, TABLE, meta), TABLE, meta)
    assert d2.equal(res, segmentation_only=True)
    assert torch.equal(d2.score[d2.isthing], res.score[res.isthing])
    classes = list(mm_things) + list(mm_stuff)
    mm = from_mmdet_panoptic(to_mmdet(res, TABLE, classes), TABLE, classes)
    assert same_segments(mm, res) and mm.num_segments == res.num_segments
