"""``MaskFormerFusion`` rules on hand-computed fixtures, invariants (hypothesis), input errors, the class-index map,
the query adapters and one end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from maskformer_refs import CLASS_MAP, TABLE, THING_OF_CLASS, paste_loop, random_scene

from panoptic import CategoryTable, MaskFormerFusion, PanopticResult, Queries
from panoptic._ops.queries import assign_queries, paste_in_order
from panoptic.categories import CategoryError
from panoptic.formats import from_coco, to_coco
from panoptic.interop import from_detectron2_queries, from_transformers_queries

STUFF = int(torch.nonzero(~THING_OF_CLASS)[0])  # model class of the first stuff category ("sky")
THING = int(torch.nonzero(THING_OF_CLASS)[0])  # model class 0, "person"
K = int(CLASS_MAP.numel())


def class_logits(*rows: tuple[int, float]) -> torch.Tensor:
    """One row per query: (model class, logit); every other column -20 (so the score is ~1 at logit 10)."""
    out = torch.full((len(rows), K + 1), -20.0)
    for i, (c, v) in enumerate(rows):
        out[i, c] = v
    return out


def fuse(flavor: str, cls: torch.Tensor, masks: torch.Tensor, **kw: object) -> PanopticResult:
    fusion = MaskFormerFusion(TABLE, flavor=flavor, class_map=CLASS_MAP, **kw)  # type: ignore[arg-type]
    result = fusion(Queries(cls, masks))[0]
    result.validate(TABLE)
    return result


def test_overlap_ratio_three_quarters_is_kept_by_mask2former_and_dropped_by_transformers() -> None:
    # query 0 covers all 4 pixels; query 1 (more confident mask) takes pixel (0, 0): query 0 keeps 3 / 4
    cls = class_logits((THING, 10.0), (THING, 10.0))
    masks = torch.tensor([[[5.0, 5.0], [5.0, 5.0]], [[10.0, -10.0], [-10.0, -10.0]]])
    m2f = fuse("mask2former", cls, masks, overlap_threshold=0.75)
    assert m2f.segment_map.tolist() == [[2, 1], [1, 1]] and m2f.source.tolist() == [0, 1]
    hf = fuse("transformers", cls, masks, overlap_threshold=0.75)  # float32(0.75) > 0.75 is false
    assert hf.segment_map.tolist() == [[1, 0], [0, 0]] and hf.source.tolist() == [1]


def test_mask2former_paints_only_the_foreground_of_the_region_maskformer_all_of_it() -> None:
    cls = class_logits((THING, 10.0))
    masks = torch.tensor([[[5.0, 5.0], [5.0, -1.0]]])  # one query owns all 4 pixels, 3 are foreground
    assert fuse("mask2former", cls, masks, overlap_threshold=0.7).segment_map.tolist() == [[1, 1], [1, 0]]
    assert fuse("maskformer", cls, masks, overlap_threshold=0.7).segment_map.tolist() == [[1, 1], [1, 1]]
    # region 4 / foreground 3 >= 0.8 passes; the painted area is what the segment gets
    assert fuse("mask2former", cls, masks).area.tolist() == [3]


def test_transformers_thresholds_the_score_weighted_probability() -> None:
    # score 0.6, probability 0.8: HF's foreground is 0.48 < 0.5, so nothing; Mask2Former keeps it
    probs = torch.full((1, K + 1), 0.4 / K)
    probs[0, THING] = 0.6
    masks = torch.full((1, 2, 2), math.log(4.0))  # sigmoid = 0.8
    assert fuse("transformers", probs.log(), masks).num_segments == 0
    assert fuse("mask2former", probs.log(), masks, object_mask_threshold=0.5).segment_map.tolist() == [[1, 1],
                                                                                                       [1, 1]]


def test_score_threshold_is_strict_and_no_object_never_kept() -> None:
    masks = torch.full((1, 2, 2), 5.0)
    tie = class_logits((THING, 0.0))
    tie[0, 1] = 0.0  # two equal classes: score exactly 0.5, the first class wins
    assert fuse("mask2former", tie, masks, object_mask_threshold=0.5).num_segments == 0  # 0.5 > 0.5 is false
    assert fuse("mask2former", tie, masks, object_mask_threshold=0.49).num_segments == 1
    assert fuse("mask2former", class_logits((K, 10.0)), masks, object_mask_threshold=0.0).num_segments == 0


def test_stuff_queries_of_one_category_merge_things_do_not() -> None:
    masks = torch.full((4, 2, 4), -10.0)
    for q in range(4):
        masks[q, :, q] = 10.0
    cls = class_logits((STUFF, 10.0), (THING, 10.0), (STUFF, 10.0), (THING, 10.0))
    r = fuse("mask2former", cls, masks)
    assert r.segment_map[0].tolist() == [1, 2, 1, 3]
    assert r.source.tolist() == [0, 1, 3] and r.isthing.tolist() == [False, True, True]
    assert r.category.tolist() == [int(CLASS_MAP[STUFF]), int(CLASS_MAP[THING]), int(CLASS_MAP[THING])]
    # transformers: label_ids_to_fuse decides; fusing nothing gives two sky segments
    r = MaskFormerFusion(TABLE, "transformers", class_map=CLASS_MAP, label_ids_to_fuse=[])(Queries(cls, masks))[0]
    assert r.segment_map[0].tolist() == [1, 2, 3, 4]


def test_kmax_pixelwise_rule() -> None:
    probs = torch.full((3, K + 1), 0.01)
    probs[0, THING], probs[0, K] = 0.72, 0.23  # kept: 0.72 >= 0.7
    probs[1, STUFF], probs[1, K] = 0.9, 0.05
    probs[2, THING], probs[2, K] = 0.5, 0.45  # rejected slot (0.5 < 0.7)
    masks = torch.tensor([[[3.0, 0.0, 0.0, -9.0]], [[0.0, 3.0, 0.0, -9.0]], [[0.0, 0.0, 0.0, 9.0]]])
    r = fuse("kmax", probs.log(), masks)
    # pixel 0: slot 0 (softmax e^3 / (e^3 + 1) > 0.4); pixel 2: two kept slots at 0 -> 0.5 > 0.4, first wins;
    # pixel 3: the largest logit is the rejected slot's -> void
    assert r.segment_map.tolist() == [[1, 2, 1, 0]] and r.source.tolist() == [0, 1]
    assert fuse("kmax", probs.log(), masks, mask_threshold=0.5).segment_map.tolist() == [[1, 2, 0, 0]]  # strict
    assert fuse("kmax", probs.log(), masks, thing_area_limit=3).segment_map.tolist() == [[0, 1, 0, 0]]
    assert fuse("kmax", probs.log(), masks, stuff_area_limit=2).segment_map.tolist() == [[1, 0, 1, 0]]
    # the no-object column never vetoes a slot (Mask2Former's rule drops a query whose best class is no-object)
    veto = probs.clone()
    veto[0, THING], veto[0, K] = 0.35, 0.6
    assert fuse("kmax", veto.log(), masks, object_mask_threshold=0.3).source.tolist() == [0, 1, 2]
    # (slot 2 owns 1 of its 4 foreground pixels there: dropped by the overlap test)
    assert fuse("mask2former", veto.log(), masks, object_mask_threshold=0.3).source.tolist() == [1]


def slot_rows(*rows: tuple[float, ...]) -> torch.Tensor:
    """``(Q, 1, W)`` slot logits ``log p`` from per-slot probability rows (columns sum to 1: softmax gives p back)."""
    return torch.tensor(rows).log()[:, None, :]


def class_probs(*rows: tuple[int, float]) -> torch.Tensor:
    """Class logits ``log p``: the best model class with probability p, "no object" the rest but 0.001 per class."""
    probs = torch.full((len(rows), K + 1), 0.001)
    for i, (c, v) in enumerate(rows):
        probs[i, c], probs[i, K] = v, 1.0 - v - 0.001 * (K - 1)
    return probs.log()


def tie(first: int, second: int) -> torch.Tensor:
    """Class logits row with probability exactly 0.5 for two classes (``first`` wins the argmax)."""
    row = torch.full((K + 1,), -200.0)  # exp underflows to 0 in float32
    row[first] = row[second] = 0.0
    return row


def test_kmax_maskwise_order_and_overlap() -> None:
    # 1x3, slot 0 claims pixels {0, 1}, slot 1 {0, 2}, slot 2 (rejected class) nothing (0.35 is not > 0.4)
    masks = slot_rows((0.5, 0.98, 0.01), (0.49, 0.01, 0.64), (0.01, 0.01, 0.35))
    cls = class_probs((THING, 0.9), (THING, 0.9), (THING, 0.3))
    # mask scores 0.74 and 0.565: slot 0 first; slot 1 keeps 1 of its 2 pixels: 1 > 0.8 * 2 fails
    r = fuse("kmax_maskwise", cls, masks)
    assert r.segment_map.tolist() == [[1, 1, 0]] and r.source.tolist() == [0]
    assert fuse("kmax_maskwise", cls, masks, overlap_threshold=0.4).segment_map.tolist() == [[1, 1, 2]]
    assert fuse("kmax_maskwise", cls, masks, overlap_threshold=0.5).segment_map.tolist() == [[1, 1, 0]]  # 1 > 1
    # class^a * mask^b: 0.72 * 0.74 = 0.533 < 0.99 * 0.565 = 0.559, so slot 1 goes first and slot 0 keeps 1 / 2
    cls = class_probs((THING, 0.72), (THING, 0.99), (THING, 0.3))
    r = fuse("kmax_maskwise", cls, masks)
    assert r.segment_map.tolist() == [[1, 0, 1]] and r.source.tolist() == [1]
    assert fuse("kmax_maskwise", cls, masks, reorder_weights=(0.0, 1.0)).source.tolist() == [0]  # mask score only
    # equal scores (weights 0, 0): the stable order keeps slot order
    assert fuse("kmax_maskwise", cls, masks, reorder_weights=(0.0, 0.0)).source.tolist() == [0]


def test_kmax_maskwise_thresholds_merging_and_limits() -> None:
    # 1x5: slot 0 sky {0, 1} (class exactly 0.5), slot 1 sky {4}, slot 2 person {2} (exactly 0.5), slot 3 car {3}
    masks = slot_rows((0.98, 0.98, 0.01, 0.01, 0.01), (0.005, 0.005, 0.01, 0.01, 0.98),
                      (0.005, 0.005, 0.97, 0.01, 0.005), (0.01, 0.01, 0.01, 0.97, 0.005))
    car = int(torch.nonzero(THING_OF_CLASS)[1])
    cls = torch.cat([tie(STUFF, STUFF + 2)[None], class_probs((STUFF, 0.9)), tie(THING, car + 2)[None],
                     class_probs((car, 0.9))])
    # order: slot 1 (0.882), slot 3 (0.873), slot 0 (0.49), slot 2 (0.485); stuff 0.5 >= 0.5 passes, the thing
    # threshold 0.7 stops slot 2; the two sky slots are one segment, numbered by the first pasted
    r = fuse("kmax_maskwise", cls, masks)
    assert r.segment_map.tolist() == [[1, 1, 0, 2, 1]] and r.source.tolist() == [1, 3]
    assert r.category.tolist() == [int(CLASS_MAP[STUFF]), int(CLASS_MAP[car])] and r.area.tolist() == [3, 1]
    assert fuse("kmax_maskwise", cls, masks, stuff_object_mask_threshold=0.51).segment_map.tolist() == [
        [0, 0, 0, 2, 1]]
    r = fuse("kmax_maskwise", cls, masks, object_mask_threshold=0.5)  # things: 0.5 >= 0.5
    assert r.segment_map.tolist() == [[1, 1, 3, 2, 1]] and r.source.tolist() == [1, 3, 2]
    assert fuse("kmax_maskwise", cls, masks, thing_area_limit=2).segment_map.tolist() == [[1, 1, 0, 0, 1]]
    assert fuse("kmax_maskwise", cls, masks, stuff_area_limit=3).segment_map.tolist() == [[1, 1, 0, 2, 1]]
    assert fuse("kmax_maskwise", cls, masks, stuff_area_limit=4).segment_map.tolist() == [[0, 0, 0, 1, 0]]


def test_kmax_maskwise_no_object_and_empty() -> None:
    masks = torch.zeros(1, 2, 2)  # one slot: softmax 1 everywhere
    cls = class_probs((STUFF, 0.35))  # "no object" has 0.645: excluded, it never vetoes
    assert fuse("kmax_maskwise", cls, masks, stuff_object_mask_threshold=0.3).segment_map.tolist() == [[1, 1],
                                                                                                        [1, 1]]
    assert fuse("kmax_maskwise", cls, masks).num_segments == 0  # 0.35 < 0.5: nothing pasted, all void


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), density=st.floats(0.0, 1.0),
       threshold=st.floats(0.0, 1.0))
def test_paste_in_order_equals_the_loop(seed: int, n: int, density: float, threshold: float) -> None:
    g = torch.Generator().manual_seed(seed)
    claims = torch.rand(n, 5, 7, generator=g) < density
    allowed = torch.rand(n, generator=g) < 0.8
    owner, pasted = paste_in_order(claims, allowed, threshold)
    ref_owner, ref_pasted = paste_loop(claims, allowed, threshold)
    assert torch.equal(owner, ref_owner) and torch.equal(pasted, ref_pasted)
    # the rule itself: a pixel's owner claims it and no earlier pasted mask does; pasted masks keep > t of theirs
    on = owner < n
    assert bool(claims.gather(0, owner.clamp(max=n - 1)[None])[0][on].all())
    earlier = torch.arange(n).view(-1, 1, 1) < owner
    assert not bool((claims & pasted.view(-1, 1, 1) & earlier).any())
    area = claims.sum((1, 2)).float() * torch.tensor(threshold, dtype=torch.float32)
    kept = torch.bincount(owner.reshape(-1), minlength=n + 1)[:n]
    assert bool((kept[pasted] > area[pasted]).all()) and not bool((allowed[~pasted] & (kept[~pasted] > 0)).any())


def test_paste_in_order_many_masks() -> None:
    # 300 masks: per-pixel counts and codes no longer fit in a byte (the int path)
    g = torch.Generator().manual_seed(2)
    for density in (0.005, 0.05, 0.5):
        claims = torch.rand(300, 3, 4, generator=g) < density
        allowed = torch.rand(300, generator=g) < 0.9
        for threshold in (0.0, 0.5):
            owner, pasted = paste_in_order(claims, allowed, threshold)
            ref_owner, ref_pasted = paste_loop(claims, allowed, threshold)
            assert torch.equal(owner, ref_owner) and torch.equal(pasted, ref_pasted)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_kmax_maskwise_invariants(seed: int) -> None:
    cls, masks, size = random_scene(torch.Generator().manual_seed(seed), max_queries=20)
    fusion = MaskFormerFusion(TABLE, flavor="kmax_maskwise", class_map=CLASS_MAP)
    r = fusion(Queries(cls / 4, masks / 4), output_size=size)[0]
    r.validate(TABLE)
    conf, pred = torch.softmax(cls / 4, -1)[:, :-1].max(-1)
    src = r.source
    assert src.unique().numel() == src.numel() and torch.equal(r.category, CLASS_MAP[pred[src]])
    assert bool((conf[src] >= torch.where(r.isthing, 0.7, 0.5)).all())  # each its thing / stuff threshold
    logits = torch.nn.functional.interpolate(masks[None] / 4, size=size, mode="bilinear", align_corners=True)[0]
    claims = torch.softmax(logits, 0) > 0.4
    for i, q in enumerate(src.tolist()):  # a thing segment is the part of its slot's mask still free, > 0.8 of it
        if bool(r.isthing[i]):
            seg = r.segment_map == i + 1
            assert bool(claims[q][seg].all()) and int(seg.sum()) > 0.8 * int(claims[q].sum())


def test_upsampling_and_empty() -> None:
    cls = class_logits((THING, 10.0))
    masks = torch.tensor([[[5.0, -5.0]]])
    r = MaskFormerFusion(TABLE, class_map=CLASS_MAP)(Queries(cls, masks), output_size=(1, 4))[0]
    assert r.segment_map.tolist() == [[1, 1, 0, 0]]  # bilinear logits 5, 2.5, -2.5, -5
    for flavor in ("mask2former", "kmax", "kmax_maskwise"):
        fusion = MaskFormerFusion(TABLE, flavor, class_map=CLASS_MAP)  # type: ignore[arg-type]
        empty = fusion(Queries(torch.zeros(0, K + 1), torch.zeros(0, 3, 3)))[0]
        assert empty.num_segments == 0 and empty.segment_map.shape == (3, 3) and not bool(empty.segment_map.any())
    assert MaskFormerFusion(TABLE, class_map=CLASS_MAP)([]) == []


def test_assign_queries_equals_first_argmax_with_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    import panoptic._ops.queries as ops_queries

    monkeypatch.setattr(ops_queries, "CHUNK_BYTES", 64)  # many row chunks of one row
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 30, 300):
        prob = (torch.randint(0, 4, (n, 5, 6), generator=g) / 4.0)  # many ties
        scores = torch.randint(1, 3, (n,), generator=g) / 2.0
        weighted = prob * scores.view(-1, 1, 1)
        for of_weighted in (False, True):
            a = assign_queries(prob.clone(), scores, 0.5, of_weighted)
            assert torch.equal(a.owner, weighted.argmax(0))
            logits = torch.logit(prob.clamp(0.05, 0.95))  # the sigmoid taken inside, chunk by chunk
            b = assign_queries(logits.clone(), scores, 0.5, of_weighted, sigmoid=True)
            assert torch.equal(b.owner, (logits.sigmoid() * scores.view(-1, 1, 1)).argmax(0))
            fg = (weighted if of_weighted else prob) >= 0.5
            assert torch.equal(a.foreground_area, fg.sum((1, 2)))
            assert torch.equal(a.region_area, torch.bincount(a.owner.reshape(-1), minlength=n))
            assert torch.equal(a.owner_foreground, fg.gather(0, a.owner[None])[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), flavor=st.sampled_from(["mask2former", "maskformer", "transformers", "kmax"]))
def test_invariants(seed: int, flavor: str) -> None:
    cls, masks, size = random_scene(torch.Generator().manual_seed(seed), max_queries=20)
    fusion = MaskFormerFusion(TABLE, flavor=flavor, class_map=CLASS_MAP)  # type: ignore[arg-type]
    r = fusion(Queries(cls, masks), output_size=size)[0]
    r.validate(TABLE)  # contiguous ids, positive areas, one segment per stuff category
    scores, labels = torch.softmax(cls, -1).max(-1)
    src = r.source
    assert bool((labels[src] != K).all()) and bool((scores[src] > fusion.object_mask_threshold).all())
    assert torch.equal(r.category, CLASS_MAP[labels[src]]) and torch.equal(r.score, scores[src])
    assert src.unique().numel() == src.numel() and torch.equal(src, src.sort().values)  # query order


def test_input_errors_name_the_fix() -> None:
    fusion = MaskFormerFusion(TABLE, class_map=CLASS_MAP)
    with pytest.raises(ValueError, match="K \\+ 1"):
        fusion(Queries(torch.zeros(2, K), torch.zeros(2, 4, 4)))
    with pytest.raises(ValueError, match="unbatch"):
        fusion(Queries(torch.zeros(1, 2, K + 1), torch.zeros(1, 2, 4, 4)))
    with pytest.raises(ValueError, match="same queries"):
        fusion(Queries(torch.zeros(2, K + 1), torch.zeros(3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fusion(Queries(torch.zeros(1, K + 1), torch.full((1, 4, 4), float("nan"))))
    with pytest.raises(ValueError, match="list of them"):
        fusion(torch.zeros(2, K + 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flavor"):
        MaskFormerFusion(TABLE, flavor="detr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_index_map"):
        MaskFormerFusion(TABLE, class_map=[0, 99])
    with pytest.raises(ValueError, match="1-D int"):
        MaskFormerFusion(TABLE, class_map=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="transformers"):
        MaskFormerFusion(TABLE, label_ids_to_fuse=[1])
    with pytest.raises(ValueError, match="kmax"):
        MaskFormerFusion(TABLE, stuff_area_limit=10)
    with pytest.raises(ValueError, match="overlap_threshold"):
        MaskFormerFusion(TABLE, overlap_threshold=1.5)
    with pytest.raises(ValueError, match="kmax_maskwise"):
        MaskFormerFusion(TABLE, flavor="kmax", reorder_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="kmax_maskwise"):
        MaskFormerFusion(TABLE, stuff_object_mask_threshold=0.5)
    with pytest.raises(ValueError, match="reorder_weights"):
        MaskFormerFusion(TABLE, flavor="kmax_maskwise", reorder_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="stuff_object_mask_threshold"):
        MaskFormerFusion(TABLE, flavor="kmax_maskwise", stuff_object_mask_threshold=2.0)
    with pytest.raises(TypeError, match="Queries"):
        fusion.fuse_image(torch.zeros(K, 2, 2), None)  # type: ignore[arg-type]


def test_class_index_map_orders() -> None:
    assert TABLE.names == ("sky", "road", "grass", "person", "car", "dog")
    assert TABLE.class_index_map("dataset").tolist() == [3, 0, 4, 1, 5, 2]
    assert TABLE.class_index_map("things_first").tolist() == [3, 4, 5, 0, 1, 2]
    assert TABLE.class_index_map("stuff_first").tolist() == list(range(6))
    assert TABLE.class_index_map([103, 1]).tolist() == [2, 3]
    with pytest.raises(CategoryError, match="unknown class order"):
        TABLE.class_index_map("sorted")
    with pytest.raises(CategoryError, match="repeats"):
        TABLE.class_index_map([1, 1])
    with pytest.raises(CategoryError, match="unknown category id 5"):
        TABLE.class_index_map([5])


def test_adapters_and_end_to_end() -> None:
    g = torch.Generator().manual_seed(5)
    scenes = [random_scene(g, max_queries=8)[:2] for _ in range(2)]
    q = 8
    cls = torch.stack([torch.cat([c, torch.full((q - len(c), K + 1), -9.0)]) for c, _ in scenes])
    masks = torch.stack([torch.nn.functional.interpolate(torch.cat([m, torch.zeros(q - len(m), *m.shape[1:])])[None],
                                                         size=(16, 16))[0] for _, m in scenes])
    hf = from_transformers_queries({"class_queries_logits": cls, "masks_queries_logits": masks})
    d2 = from_detectron2_queries({"pred_logits": cls, "pred_masks": masks, "aux_outputs": []})
    fusion = MaskFormerFusion(TABLE, class_map=TABLE.class_index_map("dataset"))
    a, b = fusion(hf, output_size=(40, 48)), fusion(d2, output_size=(40, 48))
    assert len(a) == 2 and all(x.equal(y) for x, y in zip(a, b, strict=True))
    for r in a:
        r.validate(TABLE)
        png, info = to_coco(r, TABLE)  # through to the COCO-panoptic export
        assert png.shape == (40, 48, 3) and len(info) == r.num_segments
        assert from_coco(png, info, TABLE).equal(r, segmentation_only=True)
    with pytest.raises(ValueError, match="pred_masks"):
        from_detectron2_queries({"pred_logits": cls})
    with pytest.raises(ValueError, match="batch size"):
        from_transformers_queries({"class_queries_logits": cls, "masks_queries_logits": masks[:1]})


def test_default_table_layout_is_identity() -> None:
    table = CategoryTable.cityscapes()
    fusion = MaskFormerFusion(table)
    assert fusion.class_map.tolist() == list(range(19)) and fusion.num_model_classes == 19
