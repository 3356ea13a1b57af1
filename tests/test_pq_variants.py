"""PQ-dagger, Boundary PQ and Parsing Covering: hand-computed fixtures, the boundary band rule, and parity with
independent re-expressions of the references (boundary-iou-api's ``coco_panoptic_api/evaluation.py`` and
``mask_to_boundary``; tensorflow/models' ``parsing_covering.py`` with its COCO driver) and with torchmetrics'
``ModifiedPanopticQuality`` where its semantics coincide (no GT crowd, no predicted void)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from scipy import ndimage

from panoptic import CategoryTable
from panoptic.evaluation import MetricConfig, PanopticQuality
from panoptic.evaluation import _boundary as boundary_module
from panoptic.evaluation._boundary import band_width, boundary_mask, boundary_mask_numpy
from panoptic.formats import from_coco

# Dataset ids: stuff 1, 2, 3; things 11, 12, 13.
CATS = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 11, "name": "person", "isthing": 1},
        {"id": 2, "name": "road", "isthing": 0}, {"id": 12, "name": "car", "isthing": 1},
        {"id": 3, "name": "grass", "isthing": 0}, {"id": 13, "name": "bike", "isthing": 1}]
TABLE = CategoryTable.from_coco(CATS)
STUFF, THINGS = [1, 2, 3], [11, 12, 13]
ALL = MetricConfig.all()


def _metric(config: MetricConfig = ALL) -> PanopticQuality:
    return PanopticQuality(TABLE, category_order=[c["id"] for c in CATS], config=config)


def _update(metric: PanopticQuality, gt_ids, gt_segs, pred_ids, pred_segs, key=None) -> None:
    gt = from_coco(np.asarray(gt_ids), gt_segs, TABLE)
    pred = from_coco(np.asarray(pred_ids), pred_segs, TABLE)
    metric.update(gt, pred, gt_ids=[s["id"] for s in gt_segs], key=key)


def _segs(pairs, crowd=()):
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


# ------------------------------------------------------------------------------------- boundary bands
def _ref_mask_to_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """boundary-iou-api's rule: pad one zero pixel, erode d times with a 3x3 square (border = 1), subtract."""
    pad = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(pad, np.ones((3, 3), bool), iterations=d, border_value=1)[1:-1, 1:-1]
    return mask & ~eroded


def _blocky(rng: np.random.Generator, h: int, w: int, k: int) -> np.ndarray:
    coarse = rng.integers(0, k + 1, (int(rng.integers(1, 6)), int(rng.integers(1, 6))))
    ys = np.arange(h) * coarse.shape[0] // h
    xs = np.arange(w) * coarse.shape[1] // w
    ids = coarse[ys][:, xs]
    noise = rng.random((h, w)) < 0.04
    ids[noise] = rng.integers(0, k + 1, int(noise.sum()))
    return ids


def test_band_width_rule():
    assert band_width(1024, 2048) == 46  # round(0.02 * 2289.7)
    assert band_width(10, 10) == 1  # never below 1
    assert band_width(100, 100, 0.1) == 14
    with pytest.raises(ValueError, match="ratio"):
        band_width(10, 10, 0.0)


def test_boundary_band_of_a_square_by_hand():
    ids = np.zeros((7, 7), np.uint32)
    ids[1:6, 1:6] = 5
    band = boundary_mask_numpy(ids, 1)
    assert band[1:6, 1:6].sum() == 16 and not band[2:5, 2:5].any()  # the 5x5 square keeps its 3x3 interior
    assert band[0].all() and band[:, 0].all()  # void next to the square and the image border: band too


def test_boundary_bands_equal_per_segment_erosion():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        ids = _blocky(rng, h, w, int(rng.integers(1, 5))).astype(np.uint32)
        d = int(rng.integers(1, 5))
        ref = np.zeros((h, w), bool)
        for s in np.unique(ids):
            ref |= _ref_mask_to_boundary(ids == s, d)
        assert np.array_equal(boundary_mask_numpy(ids, d), ref)
        assert np.array_equal(boundary_mask(ids, d), ref)


def test_boundary_native_and_numpy_paths_agree(monkeypatch):
    rng = np.random.default_rng(1)
    ids = _blocky(rng, 37, 53, 6).astype(np.uint32)
    key = np.zeros(ids.size, np.int32)
    boundary_module.add_boundary(ids, key, 3, 5, void_too=True)
    monkeypatch.setattr(boundary_module, "_native", None)
    key2 = np.zeros(ids.size, np.int32)
    boundary_module.add_boundary(ids, key2, 3, 5, void_too=True)
    assert np.array_equal(key, key2)
    assert np.array_equal(key2 == 5, (boundary_mask_numpy(ids, 3) | (ids == 0)).reshape(-1))


# ------------------------------------------------------------------------------------- hand-computed
def test_pq_dagger_stuff_is_mean_iou_without_threshold():
    # 4x4: sky GT is 12 px; the predicted sky covers 4 of them (IoU 4/12, below 0.5); person matches.
    gt = [[7, 7, 7, 7], [7, 7, 7, 7], [7, 7, 7, 7], [9, 9, 0, 0]]
    pred = [[3, 3, 3, 3], [4, 4, 4, 4], [4, 4, 4, 4], [8, 8, 0, 0]]
    m = _metric()
    _update(m, gt, _segs([(7, 1), (9, 11)]), pred, _segs([(3, 1), (4, 2), (8, 11)]))
    res = m.compute()
    assert res["per_class"][1]["pq"] == 0.0  # PQ: unmatched
    dag = res["pq_dagger"]
    assert dag["per_class"][1]["pq"] == 4 / 12 and dag["per_class"][1]["rq"] == 1.0
    assert dag["per_class"][11]["pq"] == res["per_class"][11]["pq"] == 1.0  # things as PQ
    assert dag["per_class"][2]["segments"] == 0  # road only predicted: not in PQ-dagger's means
    assert dag["Stuff"] == {"pq": 4 / 12, "sq": 4 / 12, "rq": 1.0, "n": 1}
    assert dag["All"]["n"] == 2 and dag["All"]["pq"] == (4 / 12 + 1.0) / 2


def test_pq_dagger_crowd_stuff_and_missing_prediction():
    gt = [[7, 7, 8, 8], [7, 7, 8, 8]]
    pred = [[0, 0, 0, 0], [0, 0, 0, 0]]
    m = _metric()
    _update(m, gt, _segs([(7, 1), (8, 2)], crowd=(8,)), pred, [])
    dag = m.compute()["pq_dagger"]
    assert dag["per_class"][1]["segments"] == 1 and dag["per_class"][1]["pq"] == 0.0  # nothing predicted: IoU 0
    assert dag["per_class"][2]["segments"] == 0  # crowd stuff is not counted


def test_boundary_pq_uses_the_smaller_iou():
    # 8x8 GT square of 6x6 (person) on sky; prediction: same square shifted by one column.
    gt = np.full((8, 8), 7)
    gt[1:7, 1:7] = 9
    pred = np.full((8, 8), 3)
    pred[1:7, 2:8] = 4
    m = _metric(MetricConfig(metrics=("boundary_pq",), boundary_ratio=0.1))  # d = round(1.13) = 1
    _update(m, gt, _segs([(7, 1), (9, 11)]), pred, _segs([(3, 1), (4, 11)]))
    res = m.compute()
    # Mask IoU of the things: 30 / 42 > 0.5. Bands (d = 1): both squares' 20 px rings (the image border counts
    # as outside), sharing the 10 px of their top and bottom rows: boundary IoU 10 / 30 decides.
    g_band = boundary_mask_numpy(gt.astype(np.uint32), 1) & (gt == 9)
    p_band = boundary_mask_numpy(pred.astype(np.uint32), 1) & (pred == 4)
    assert (g_band.sum(), p_band.sum(), (g_band & p_band).sum()) == (20, 20, 10)
    assert res["per_class"][11]["tp"] == 1 and res["boundary_pq"]["per_class"][11]["tp"] == 0
    assert res["boundary_pq"]["per_class"][11]["fn"] == 1 and res["boundary_pq"]["per_class"][11]["fp"] == 1


def test_parsing_covering_by_hand():
    # GT: sky 8 px, person 4 px (two predictions of person overlap it: IoU 2/4 and 2/6), void 4 px.
    gt = [[7, 7, 7, 7], [7, 7, 7, 7], [9, 9, 9, 9], [0, 0, 0, 0]]
    pred = [[3, 3, 3, 3], [3, 3, 3, 3], [4, 4, 5, 5], [0, 0, 5, 5]]
    m = _metric(MetricConfig(metrics=("pc",), pc_normalize=False))
    _update(m, gt, _segs([(7, 1), (9, 11)]), pred, _segs([(3, 1), (4, 11), (5, 11)]))
    pc = m.compute()["pc"]
    assert pc["per_class"][1] == {"pc": 1.0, "area": 8.0, "name": "sky", "isthing": False}
    # Prediction 5 has 4 px, 2 of them on GT void: p' = 2 -> IoU 2 / (4 + 2 - 2) = 0.5; prediction 4: 2/4.
    assert pc["per_class"][11]["pc"] == 0.5
    assert pc["All"] == {"pc": 0.75, "n": 2} and pc["Things"]["n"] == 1


# ------------------------------------------------------------------------------------- random pairs
def _random_image(rng: np.random.Generator, crowd_ok: bool = True, pred_void: bool = True):
    h, w = (int(v) for v in rng.integers(6, 28, 2))
    gt = _blocky(rng, h, w, int(rng.integers(1, 7)))
    gt_segs, used_stuff, crowd = [], set(), set()
    for sid in np.unique(gt):
        if sid == 0:
            continue
        cat = int(rng.choice(STUFF + THINGS))
        if cat in STUFF and cat in used_stuff:
            cat = int(rng.choice(THINGS))
        used_stuff.add(cat)
        is_crowd = crowd_ok and cat in THINGS and rng.random() < 0.2
        gt_segs.append({"id": int(sid) * 10, "category_id": cat, "iscrowd": int(is_crowd)})
        if is_crowd:
            crowd.add(int(sid) * 10)
    gt = gt * 10
    # Prediction: the GT shifted, relabelled, some segments merged or re-classed, some void.
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    if rng.random() < 0.5:
        other = _blocky(rng, h, w, 4) * 10 + 1000
        pick = rng.random((h, w)) < 0.3
        pred = np.where(pick & (other > 1000), other, pred)
    if not pred_void:
        pred = np.where(pred == 0, 5000, pred)
    elif rng.random() < 0.5:
        pred[rng.random((h, w)) < 0.1] = 0
    pred_segs, used_stuff = [], set()
    gcat = {s["id"]: s["category_id"] for s in gt_segs}
    for sid in np.unique(pred):
        if sid == 0:
            continue
        cat = gcat.get(int(sid), int(rng.choice(STUFF + THINGS)))
        if rng.random() < 0.2:
            cat = int(rng.choice(STUFF + THINGS))
        if cat in STUFF and cat in used_stuff:
            cat = int(rng.choice(THINGS))
        used_stuff.add(cat)
        pred_segs.append({"id": int(sid) + 7, "category_id": cat})
    pred = np.where(pred > 0, pred + 7, 0)
    rng.shuffle(gt_segs)
    return gt, gt_segs, pred, pred_segs


def _ref_boundary_pq_image(gt, gt_segs, pred, pred_segs, d, stat):
    """boundary-iou-api's per-image loop, re-expressed (interiors marked -1, so no id is special)."""
    gt_seg = {s["id"]: dict(s, area=int((gt == s["id"]).sum())) for s in gt_segs}
    pred_seg = {s["id"]: dict(s, area=int((pred == s["id"]).sum())) for s in pred_segs}
    maps = []
    for ids, segs in ((gt, gt_seg), (pred, pred_seg)):
        bmap = ids.copy()
        for sid, s in segs.items():
            mask = ids == sid
            band = _ref_mask_to_boundary(mask, d)
            bmap[mask] = -1
            bmap[band] = sid
            s["boundary_area"] = int(band.sum())
        maps.append(bmap)

    def pairs(a, b):
        out = defaultdict(int)
        for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
            out[(x, y)] += 1
        return out

    inter, binter = pairs(gt, pred), pairs(*maps)
    gt_matched, pred_matched = set(), set()
    for (g, p), i in sorted(inter.items()):
        if g not in gt_seg or p not in pred_seg or gt_seg[g]["iscrowd"]:
            continue
        if gt_seg[g]["category_id"] != pred_seg[p]["category_id"]:
            continue
        iou = i / (pred_seg[p]["area"] + gt_seg[g]["area"] - i - inter.get((0, p), 0))
        bi = binter.get((g, p), 0)
        bu = pred_seg[p]["boundary_area"] + gt_seg[g]["boundary_area"] - bi - binter.get((0, p), 0)
        iou = min(iou, bi / bu)
        if iou > 0.5:
            c = gt_seg[g]["category_id"]
            stat[c]["tp"] += 1
            stat[c]["iou"] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, s in gt_seg.items():
        if g in gt_matched:
            continue
        if s["iscrowd"]:
            crowd[s["category_id"]] = g
            continue
        stat[s["category_id"]]["fn"] += 1
    for p, s in pred_seg.items():
        if p in pred_matched:
            continue
        i = inter.get((0, p), 0)
        if s["category_id"] in crowd:
            i += inter.get((crowd[s["category_id"]], p), 0)
        if i / s["area"] > 0.5:
            continue
        stat[s["category_id"]]["fp"] += 1


def test_boundary_pq_matches_the_reference_rules():
    rng = np.random.default_rng(2)
    for case in range(40):
        ratio = float(rng.choice([0.02, 0.05, 0.1, 0.2]))
        ours = _metric(MetricConfig(metrics=("boundary_pq",), boundary_ratio=ratio))
        stat = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        for _ in range(5):
            gt, gs, pred, ps = _random_image(rng)
            _update(ours, gt, gs, pred, ps)
            _ref_boundary_pq_image(gt, gs, pred, ps, band_width(*gt.shape, ratio), stat)
        got = ours.compute()["boundary_pq"]["per_class"]
        for c in STUFF + THINGS:
            ref = stat[c]
            assert (got[c]["tp"], got[c]["fp"], got[c]["fn"]) == (ref["tp"], ref["fp"], ref["fn"]), (case, c)
            assert got[c]["iou_sum"] == pytest.approx(ref["iou"], abs=1e-12)


def _ref_parsing_covering(images, normalize=True):
    """tensorflow/models' ParsingCovering + eval_coco_format's split (GT crowd -> ignored label 0), re-expressed."""
    wiou, garea = defaultdict(float), defaultdict(float)
    for gt, gt_segs, pred, pred_segs in images:
        def split(ids, segs, crowd_ok):
            cat = np.zeros(ids.shape, np.int64)
            inst = np.zeros(ids.shape, np.int64)
            nxt = defaultdict(int)
            nxt[0] = 1
            for s in segs:
                c = 0 if crowd_ok and s.get("iscrowd") else s["category_id"]
                m = ids == s["id"]
                cat[m], inst[m] = c, nxt[c]
                nxt[c] += 1
            return cat, inst

        gc, gi = split(gt, gt_segs, True)
        pc, pi = split(pred, pred_segs, False)
        gt_a, pred_a, inter = defaultdict(int), defaultdict(int), defaultdict(list)
        counts = defaultdict(int)
        for key in zip(gc.reshape(-1).tolist(), gi.reshape(-1).tolist(), pc.reshape(-1).tolist(),
                       pi.reshape(-1).tolist()):
            counts[key] += 1
        for (a, b, c, d), n in counts.items():
            if a == 0:
                continue
            gt_a[(a, b)] += n
            pred_a[(c, d)] += n
            if a == c:
                inter[(a, b)].append((d, n))
        best = {g: max(n / (gt_a[g] + pred_a[(g[0], d)] - n) for d, n in lst) for g, lst in inter.items()}
        size = gt.size if normalize else 1
        for g, a in gt_a.items():
            wiou[g[0]] += best.get(g, 0.0) * (a / size)
            garea[g[0]] += a / size
    per = {c: wiou[c] / garea[c] for c in garea if garea[c] > 0}
    return per


def test_parsing_covering_matches_the_reference_rules():
    rng = np.random.default_rng(3)
    for case in range(40):
        normalize = bool(case % 2)
        images = [_random_image(rng) for _ in range(5)]
        ours = _metric(MetricConfig(metrics=("pc",), pc_normalize=normalize))
        for im in images:
            _update(ours, *im)
        got = ours.compute()["pc"]
        ref = _ref_parsing_covering(images, normalize)
        assert {c for c, r in got["per_class"].items() if r["area"] > 0} == set(ref), case
        for c, v in ref.items():
            assert got["per_class"][c]["pc"] == pytest.approx(v, abs=1e-12)
        assert got["All"]["n"] == len(ref)
        assert got["All"]["pc"] == pytest.approx(np.mean(list(ref.values())) if ref else 0.0, abs=1e-12)
        things = [v for c, v in ref.items() if c in THINGS]
        assert got["Things"]["pc"] == pytest.approx(np.mean(things) if things else 0.0, abs=1e-12)


def test_pq_dagger_matches_torchmetrics_without_crowd_and_predicted_void():
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(4)
    for case in range(30):
        images = [_random_image(rng, crowd_ok=False, pred_void=False) for _ in range(3)]
        ours = _metric(MetricConfig(metrics=("pq_dagger",)))
        oracle = tm.ModifiedPanopticQuality(things=set(THINGS), stuffs=set(STUFF))
        for gt, gs, pred, ps in images:
            _update(ours, gt, gs, pred, ps)

            def pairs(ids, segs):
                cat = {s["id"]: s["category_id"] for s in segs}
                c = np.vectorize(lambda v: cat.get(v, 255))(ids)  # 255: unknown -> torchmetrics' void
                return torch.from_numpy(np.stack([c, ids], -1)[None].astype(np.int64))

            oracle.update(pairs(pred, ps), pairs(gt, gs))
        res = ours.compute()
        dag = res["pq_dagger"]
        tol = 1e-6  # torchmetrics divides integer areas in float32 before adding to its float64 sums
        cont = {c: k for k, c in enumerate(sorted(THINGS) + sorted(STUFF))}  # torchmetrics: things first
        for c in THINGS:
            k = cont[c]
            assert (res["per_class"][c]["tp"], res["per_class"][c]["fp"], res["per_class"][c]["fn"]) == (
                int(oracle.true_positives[k]), int(oracle.false_positives[k]), int(oracle.false_negatives[k])), case
            assert dag["per_class"][c]["iou_sum"] == pytest.approx(float(oracle.iou_sum[k]), abs=tol)
        for c in STUFF:
            k = cont[c]
            assert dag["per_class"][c]["segments"] == int(oracle.true_positives[k]), case
            assert dag["per_class"][c]["iou_sum"] == pytest.approx(float(oracle.iou_sum[k]), abs=tol)
        if dag["All"]["n"]:
            assert dag["All"]["pq"] == pytest.approx(float(oracle.compute()), abs=tol)


# ------------------------------------------------------------------------------------- exact merging
def test_merge_of_rank_states_is_bit_identical_to_one_pass():
    rng = np.random.default_rng(5)
    images = [_random_image(rng) for _ in range(23)]
    one = _metric()
    for k, im in enumerate(images):
        _update(one, *im, key=k)
    ranks = [_metric() for _ in range(3)]
    for k, im in enumerate(images):
        _update(ranks[k % 3], *im, key=k)
    merged = _metric()
    for r in ranks[::-1]:  # any order of states
        merged.merge_state(r.export_state())
    assert merged.compute() == one.compute()
    with pytest.raises(ValueError, match="twice"):
        merged.merge_state(ranks[0].export_state())
    with pytest.raises(ValueError, match="options"):
        _metric(MetricConfig()).merge_state(ranks[0].export_state())
