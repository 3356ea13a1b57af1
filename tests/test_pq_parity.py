"""Parity with panopticapi's ``pq_compute`` on generated COCO-panoptic folders (the oracle is test-only).

Install the oracle with ``pip install --no-deps panopticapi-lite``. Without it these tests are skipped,
unless ``PANOPTIC_REQUIRE_ORACLE=1``, where a missing oracle is a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PANOPTIC_REQUIRE_ORACLE") == "1":
    try:
        import panopticapi  # noqa: F401
    except ImportError as e:  # a required oracle that is missing must fail, not skip
        raise RuntimeError("PANOPTIC_REQUIRE_ORACLE=1 but panopticapi is not importable; install it with "
                           "`pip install --no-deps panopticapi-lite`.") from e
else:
    pytest.importorskip("panopticapi")

from panopticapi.evaluation import pq_compute as oracle_pq_compute
from panopticapi.evaluation import pq_compute_single_core
from PIL import Image

from panoptic import CategoryTable
from panoptic.evaluation import PanopticQuality, pq_compute
from panoptic.evaluation.files import load_coco_pair
from panoptic.formats import id2rgb

# JSON order mixes stuff and things, so the table's channel order (stuff first) differs from it.
# Thing 8 only ever appears in the GT, thing 90 and stuff 41 only in predictions.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "road", "isthing": 0},
    {"id": 2, "name": "car", "isthing": 1}, {"id": 17, "name": "sky", "isthing": 0},
    {"id": 8, "name": "truck", "isthing": 1}, {"id": 40, "name": "grass", "isthing": 0},
    {"id": 90, "name": "dog", "isthing": 1}, {"id": 41, "name": "wall", "isthing": 0},
]
GT_STUFF, GT_THINGS = [3, 17, 40], [1, 2, 8]
PRED_STUFF, PRED_THINGS = [3, 17, 40, 41], [1, 2, 90]
H, W = 64, 128


def _ids(rng: np.random.Generator, n: int) -> list[int]:
    out: set[int] = set()
    while len(out) < n:
        out.add(int(rng.integers(1, 1 << 24)))
    return list(out)


def _rect(rng: np.random.Generator, lo: int = 4, hi: int = 40) -> tuple[slice, slice]:
    h, w = int(rng.integers(lo, hi // 2 + 1)), int(rng.integers(lo, hi + 1))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return slice(y, y + h), slice(x, x + w)


def _make_gt(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A GT image: label map of segment indices and (id, category, crowd) per segment."""
    seg = np.full((H, W), -1, dtype=np.int64)
    cats: list[int] = []
    crowd: list[int] = []
    grid = rng.integers(0, len(GT_STUFF), (4, 8))
    stuff_map = np.kron(grid, np.ones((16, 16), dtype=np.int64))
    for k, c in enumerate(GT_STUFF):
        if (stuff_map == k).any():
            seg[stuff_map == k] = len(cats)
            cats.append(c)
            crowd.append(0)
    for _ in range(int(rng.integers(4, 24))):
        seg[_rect(rng, 3, 30)] = len(cats)
        cats.append(int(rng.choice(GT_THINGS)))
        crowd.append(int(rng.random() < 0.3))  # several crowd regions of one category can occur
    for _ in range(int(rng.integers(0, 4))):
        seg[_rect(rng, 2, 20)] = -1  # void
    present = np.unique(seg[seg >= 0])
    ids = _ids(rng, len(cats))
    segs = [{"id": ids[k], "category_id": cats[k], "iscrowd": crowd[k], "area": int((seg == k).sum())}
            for k in present.tolist()]
    out = np.zeros((H, W), dtype=np.int64)
    for k in present.tolist():
        out[seg == k] = ids[k]
    return out, segs


def _make_pred(rng: np.random.Generator, gt: np.ndarray, gt_segs: list[dict]) -> tuple[np.ndarray, list[dict]]:
    if rng.random() < 0.1:
        return np.zeros_like(gt), []  # an empty prediction
    shifted = np.roll(gt, (int(rng.integers(-3, 4)), int(rng.integers(-6, 7))), axis=(0, 1))
    pred = np.zeros_like(gt)
    cats: dict[int, int] = {}
    new_ids = _ids(rng, len(gt_segs) + 10)
    for s, pid in zip(gt_segs, new_ids):
        r = rng.random()
        if r < 0.1:
            continue  # missed: void
        cat = s["category_id"]
        if cat == 8 or r < 0.2:
            cat = int(rng.choice(PRED_THINGS if cat in GT_THINGS else PRED_STUFF))
        pred[shifted == s["id"]] = pid
        cats[pid] = cat
    crowds = [s for s in gt_segs if s["iscrowd"]]
    for pid in new_ids[len(gt_segs):len(gt_segs) + int(rng.integers(0, 8))]:
        if crowds and rng.random() < 0.6:
            # A false positive over part of a crowd region (and whatever lies around it).
            c = crowds[int(rng.integers(len(crowds)))]
            ys, xs = np.nonzero(gt == c["id"])
            y0, x0 = int(rng.integers(ys.min() - 2, ys.max() + 1)), int(rng.integers(xs.min() - 2, xs.max() + 1))
            pred[max(y0, 0):y0 + int(rng.integers(2, 12)), max(x0, 0):x0 + int(rng.integers(2, 16))] = pid
            same = c["category_id"] in PRED_THINGS and rng.random() < 0.8
            cats[pid] = c["category_id"] if same else int(rng.choice(PRED_THINGS))
        else:
            pred[_rect(rng, 2, 24)] = pid  # false positives, some on void
            cats[pid] = int(rng.choice(PRED_THINGS + PRED_STUFF))
    for _ in range(int(rng.integers(0, 3))):
        pred[_rect(rng, 2, 12)] = 0
    present = set(np.unique(pred).tolist()) - {0}
    segs = [{"id": pid, "category_id": c} for pid, c in cats.items() if pid in present]
    rng.shuffle(segs)
    return pred, segs


def make_dataset(root: Path, n: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {"gt_json": root / "gt.json", "pred_json": root / "pred.json", "gt_folder": root / "gt",
             "pred_folder": root / "pred"}
    paths["gt_folder"].mkdir(parents=True)
    paths["pred_folder"].mkdir(parents=True)
    gt_anns, pred_anns = [], []
    for i in range(n):
        gt, gt_segs = _make_gt(rng)
        pred, pred_segs = _make_pred(rng, gt, gt_segs)
        rng.shuffle(gt_segs)  # segments_info order != PNG id order
        name = f"{i:04d}.png"
        Image.fromarray(id2rgb(gt)).save(paths["gt_folder"] / name)
        Image.fromarray(id2rgb(pred)).save(paths["pred_folder"] / name)
        gt_anns.append({"image_id": 1000 + i, "file_name": name, "segments_info": gt_segs})
        pred_anns.append({"image_id": 1000 + i, "file_name": name, "segments_info": pred_segs})
    images = [{"id": 1000 + i, "file_name": f"{i:04d}.jpg", "height": H, "width": W} for i in range(n)]
    paths["gt_json"].write_text(json.dumps({"images": images, "annotations": gt_anns, "categories": CATEGORIES}))
    paths["pred_json"].write_text(json.dumps({"images": images, "annotations": pred_anns[::-1]}))
    return paths


def oracle_single_process(paths: dict[str, Path]) -> dict:
    """panopticapi's own per-image code and averaging, in one process (its reference summation order)."""
    gt = json.loads(paths["gt_json"].read_text())
    pred = {a["image_id"]: a for a in json.loads(paths["pred_json"].read_text())["annotations"]}
    cats = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, pairs, str(paths["gt_folder"]), str(paths["pred_folder"]), cats)
    out = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        out[name], per_class = stat.pq_average(cats, isthing=isthing)
        if name == "All":
            out["per_class"] = per_class
    return out


def _assert_close(ours: dict, ref: dict, tol: float) -> None:
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == ref[name]["n"], name
        for k in ("pq", "sq", "rq"):
            assert abs(ours[name][k] - float(ref[name][k])) <= tol, (name, k, ours[name][k], ref[name][k])
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cid, row in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][k] - float(row[k])) <= tol, (cid, k)


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "num_images"}


@pytest.fixture(scope="module", params=[0, 1])
def dataset(request, tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp(f"coco_pan_{request.param}"), 20, request.param)


def test_generator_covers_the_cases(dataset):
    gt = json.loads(dataset["gt_json"].read_text())
    pred = json.loads(dataset["pred_json"].read_text())
    gt_cats = {s["category_id"] for a in gt["annotations"] for s in a["segments_info"]}
    pred_cats = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    assert 8 in gt_cats - pred_cats and {90, 41} <= pred_cats - gt_cats
    assert any(not a["segments_info"] for a in pred["annotations"])
    assert any(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"])


def test_matches_panopticapi(dataset, capfd):
    ref_pool = oracle_pq_compute(str(dataset["gt_json"]), str(dataset["pred_json"]), str(dataset["gt_folder"]),
                                 str(dataset["pred_folder"]))
    ref_single = oracle_single_process(dataset)
    capfd.readouterr()
    ours_pool = pq_compute(**dataset, workers=2)
    ours_inproc = pq_compute(**dataset, workers=1)
    _assert_close(ours_pool, ref_pool, 1e-12)
    _assert_close(ours_pool, ref_single, 0.0)  # same summation order as panopticapi in one process
    assert ours_pool == ours_inproc
    assert ours_pool["num_images"] == 20


def test_streaming_equals_files(dataset):
    files = pq_compute(**dataset, workers=1)
    gt = json.loads(dataset["gt_json"].read_text())
    pred = {a["image_id"]: a for a in json.loads(dataset["pred_json"].read_text())["annotations"]}
    table = CategoryTable.from_coco(gt["categories"])
    exact = PanopticQuality(table, category_order=[c["id"] for c in gt["categories"]])
    plain = PanopticQuality(table)
    for a in gt["annotations"]:
        p = pred[a["image_id"]]
        g_res, p_res, gt_ids = load_coco_pair(dataset["gt_folder"] / a["file_name"], a["segments_info"],
                                              dataset["pred_folder"] / p["file_name"], p["segments_info"], table)
        exact.update(g_res, p_res, gt_ids=gt_ids)
        plain.update(g_res, p_res)
    assert exact.compute() == files
    _assert_close(plain.compute(), files, 1e-12)  # without gt_ids only the summation order differs
    assert _strip(plain.compute())["per_class"].keys() == files["per_class"].keys()
