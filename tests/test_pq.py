"""PQ rules on hand-computed 4x4 fixtures, properties, the file evaluator's checks and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from panoptic import CategoryTable, PanopticResult
from panoptic.evaluation import PanopticQuality, format_pq_results, pq_compute
from panoptic.evaluation.cli import register, run
from panoptic.formats import id2rgb
from panoptic.segments import assemble_result

# Contiguous ids: sky 0 (stuff), person 1, car 2 (things).
TABLE = CategoryTable.from_coco([
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 20, "name": "person", "isthing": 1},
    {"id": 30, "name": "car", "isthing": 1},
])
SKY, PERSON, CAR = 0, 1, 2


def result(rows: list[str], cats: dict[str, int], crowd: str = "") -> PanopticResult:
    """Build a result from a character map: ``.`` is void, each other letter one segment (sorted order)."""
    letters = sorted({c for r in rows for c in r} - {"."})
    index = {c: k for k, c in enumerate(letters)}
    labels = torch.tensor([[index.get(c, -1) for c in r] for r in rows])
    cat = torch.tensor([cats[c] for c in letters], dtype=torch.int64)
    return assemble_result(labels, cat, TABLE.isthing_tensor()[cat], torch.full((len(letters),), float("nan")),
                           torch.full((len(letters),), -1, dtype=torch.int64),
                           iscrowd=torch.tensor([c in crowd for c in letters], dtype=torch.bool))


def evaluate(gt: PanopticResult, pred: PanopticResult) -> dict:
    m = PanopticQuality(TABLE)
    m.update(gt, pred)
    return m.compute()


def counts(res: dict, cat_id: int) -> tuple[int, int, int]:
    r = res["per_class"][cat_id]
    return r["tp"], r["fp"], r["fn"]


# --------------------------------------------------------------------------------------- hand-computed
def test_perfect_match_is_one():
    rows = ["AAAA", "ABBA", "ACCA", "...."]
    cats = {"A": SKY, "B": PERSON, "C": CAR}
    res = evaluate(result(rows, cats), result(rows, cats))
    for name in ("All", "Things", "Stuff"):
        assert res[name]["pq"] == res[name]["sq"] == res[name]["rq"] == 1.0
    assert (res["All"]["n"], res["Things"]["n"], res["Stuff"]["n"]) == (3, 2, 1)


def test_iou_exactly_half_is_not_a_match():
    gt = result(["AAAA", "....", "....", "...."], {"A": PERSON})
    pred = result(["AA..", "....", "....", "...."], {"A": PERSON})  # inter 2, union 4 -> IoU 0.5
    res = evaluate(gt, pred)
    assert counts(res, 20) == (0, 1, 1)
    assert res["per_class"][20]["pq"] == 0.0 and res["per_class"][20]["sq"] == 0.0
    pred3 = result(["AAA.", "....", "....", "...."], {"A": PERSON})  # IoU 0.75
    res = evaluate(gt, pred3)
    assert counts(res, 20) == (1, 0, 0)
    assert res["per_class"][20]["pq"] == 0.75


def test_iou_value_and_pq_formula():
    gt = result(["AAAA", "BBBB", "BBBB", "BBBB"], {"A": PERSON, "B": SKY})
    pred = result(["AAA.", "BBBA", "BBBB", "BBBB"], {"A": PERSON, "B": SKY})
    res = evaluate(gt, pred)
    # person: inter 3, union 4 + 4 - 3 = 5 -> 0.6; sky: inter 11, union 11 + 12 - 11 = 12.
    assert res["per_class"][20]["iou_sum"] == 3 / 5
    assert res["per_class"][10]["iou_sum"] == 11 / 12
    assert res["Things"]["pq"] == 3 / 5
    assert res["All"]["pq"] == (3 / 5 + 11 / 12) / 2


def test_void_pixels_do_not_enlarge_the_union():
    gt = result(["AA..", "....", "....", "...."], {"A": PERSON})
    pred = result(["AAAA", "....", "....", "...."], {"A": PERSON})
    # union = 4 + 2 - 2 - |pred on GT void| (2) = 2 -> IoU 1.0 (0.5 without the void rule: no match).
    res = evaluate(gt, pred)
    assert counts(res, 20) == (1, 0, 0)
    assert res["per_class"][20]["sq"] == 1.0


def test_fp_exemption_boundary_on_void():
    gt = result(["..SS", "SSSS", "SSSS", "SSSS"], {"S": SKY})
    at_half = result(["PPPP", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})  # 2 of 4 on void: FP
    assert counts(evaluate(gt, at_half), 20) == (0, 1, 0)
    gt3 = result(["...S", "SSSS", "SSSS", "SSSS"], {"S": SKY})
    above = result(["PPPP", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})  # 3 of 4 on void: ignored
    assert counts(evaluate(gt3, above), 20) == (0, 0, 0)
    assert evaluate(gt3, above)["Things"]["n"] == 0


def test_crowd_is_never_matched_nor_fn_and_exempts_fp():
    gt = result(["CCCC", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "S": SKY}, crowd="C")
    same = result(["CCCC", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "S": SKY})
    res = evaluate(gt, same)
    assert counts(res, 20) == (0, 0, 0)  # identical to the crowd region: not a TP, ignored, no FN
    assert res["Things"]["n"] == 0 and res["Things"]["pq"] == 0.0
    other_cat = result(["CCCC", "SSSS", "SSSS", "SSSS"], {"C": CAR, "S": SKY})
    assert counts(evaluate(gt, other_cat), 30) == (0, 1, 0)  # crowd of another category does not exempt
    assert evaluate(result(["CCCC", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "S": SKY}, crowd="C"),
                    result(["....", "SSSS", "SSSS", "SSSS"], {"S": SKY}))["per_class"][20]["fn"] == 0


def test_crowd_plus_void_boundary():
    gt = result([".CSS", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "S": SKY}, crowd="C")
    half = result(["PPPP", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})  # 1 void + 1 crowd of 4 = 0.5
    assert counts(evaluate(gt, half), 20) == (0, 1, 0)
    gt2 = result([".CCS", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "S": SKY}, crowd="C")
    assert counts(evaluate(gt2, half), 20) == (0, 0, 0)  # 1 void + 2 crowd = 0.75


def test_only_the_last_crowd_region_per_category_counts():
    # Two person crowd regions: "C" (segment 1) then "D" (segment 2); panopticapi keeps the last one (D).
    gt = result(["CCDD", "SSSS", "SSSS", "SSSS"], {"C": PERSON, "D": PERSON, "S": SKY}, crowd="CD")
    on_first = result(["PP..", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    on_last = result(["..PP", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    assert counts(evaluate(gt, on_first), 20) == (0, 1, 0)
    assert counts(evaluate(gt, on_last), 20) == (0, 0, 0)


def test_category_only_in_gt_or_only_in_pred():
    gt = result(["PPSS", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    pred = result(["CCSS", "SSSS", "SSSS", "SSSS"], {"C": CAR, "S": SKY})
    res = evaluate(gt, pred)
    assert counts(res, 20) == (0, 0, 1)
    assert counts(res, 30) == (0, 1, 0)
    assert res["Things"]["n"] == 2 and res["Things"]["pq"] == 0.0
    assert res["Stuff"]["pq"] == 1.0
    assert res["All"]["n"] == 3


def test_empty_prediction_and_empty_everything_give_zero():
    gt = result(["PPSS", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    empty = result(["....", "....", "....", "...."], {})
    res = evaluate(gt, empty)
    assert res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    res = evaluate(empty, empty)
    for name in ("All", "Things", "Stuff"):
        assert res[name] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert PanopticQuality(TABLE).compute()["All"]["n"] == 0


def test_unknown_mask_is_void():
    gt = result(["PP..", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    pred = result(["PP..", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    pred.unknown_mask[0, 2:] = True
    assert evaluate(gt, pred)["All"]["pq"] == 1.0


def test_size_mismatch_and_bad_categories_are_errors():
    gt = result(["PP..", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    small = result(["PP.", "SSS", "SSS"], {"P": PERSON, "S": SKY})
    with pytest.raises(ValueError, match="nearest"):
        PanopticQuality(TABLE).update(gt, small)
    bad = result(["PP..", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    bad.category[0] = 7
    with pytest.raises(ValueError, match="contiguous"):
        PanopticQuality(TABLE).update(gt, bad)


def test_state_dict_merge_and_reset():
    gt = result(["PPSS", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    pred = result(["PPPS", "SSSS", "SSSS", "SSSS"], {"P": PERSON, "S": SKY})
    a, b, both = PanopticQuality(TABLE), PanopticQuality(TABLE), PanopticQuality(TABLE)
    a.update(gt, pred)
    b.update(pred, gt)
    both.update(gt, pred)
    both.update(pred, gt)
    assert a.merge(b).compute() == both.compute()
    summed = {k: v + w for (k, v), w in zip(a.state_dict().items(), PanopticQuality(TABLE).state_dict().values())}
    c = PanopticQuality(TABLE)
    c.load_state_dict(summed)
    assert c.compute() == both.compute()
    assert set(c.state_dict()) == {"iou_sum", "tp", "fp", "fn", "num_images"}
    c.reset()
    assert c.compute()["All"]["n"] == 0 and c.num_images == 0


def test_category_order_validation():
    with pytest.raises(ValueError, match="category_order"):
        PanopticQuality(TABLE, category_order=[10, 20])
    m = PanopticQuality(TABLE, category_order=[30, 10, 20])
    assert list(m.compute()["per_class"]) == [30, 10, 20]


# ------------------------------------------------------------------------------------------ properties
@st.composite
def panoptic_pair(draw, crowd_ok: bool = True):
    h, w = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    k = draw(st.integers(0, 6))
    labels = torch.tensor(draw(st.lists(st.integers(-1, k - 1), min_size=h * w, max_size=h * w))).reshape(h, w)
    cats = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)), dtype=torch.int64)
    crowd = torch.tensor(draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=torch.bool)
    crowd &= TABLE.isthing_tensor()[cats] & crowd_ok
    gt = assemble_result(labels, cats, TABLE.isthing_tensor()[cats], torch.full((k,), float("nan")),
                         torch.full((k,), -1, dtype=torch.int64), iscrowd=crowd)
    labels2 = torch.tensor(draw(st.lists(st.integers(-1, k - 1), min_size=h * w, max_size=h * w))).reshape(h, w)
    pred = assemble_result(labels2, cats, TABLE.isthing_tensor()[cats], torch.full((k,), float("nan")),
                           torch.full((k,), -1, dtype=torch.int64))
    return gt, pred


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panoptic_pair(crowd_ok=False))
def test_pq_is_one_when_pred_equals_gt(pair):
    gt, _ = pair
    res = evaluate(gt, gt)
    if gt.num_segments:
        assert res["All"]["pq"] == res["All"]["sq"] == res["All"]["rq"] == 1.0
    else:
        assert res["All"]["n"] == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(panoptic_pair(), min_size=1, max_size=6), st.integers(0, 6))
def test_merge_of_two_halves_equals_one_pass(pairs, cut):
    one, first, second = PanopticQuality(TABLE), PanopticQuality(TABLE), PanopticQuality(TABLE)
    for i, (gt, pred) in enumerate(pairs):
        one.update(gt, pred)
        (first if i < cut else second).update(gt, pred)
    merged = first.merge(second).compute()
    ref = one.compute()
    for k in ("tp", "fp", "fn"):
        assert torch.equal(first.state_dict()[k], one.state_dict()[k])
    for name in ("All", "Things", "Stuff"):
        assert merged[name]["n"] == ref[name]["n"]
        for key in ("pq", "sq", "rq"):
            assert merged[name][key] == pytest.approx(ref[name][key], abs=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panoptic_pair())
def test_counts_are_consistent(pair):
    gt, pred = pair
    res = evaluate(gt, pred)
    tp = sum(r["tp"] for r in res["per_class"].values())
    fp = sum(r["fp"] for r in res["per_class"].values())
    fn = sum(r["fn"] for r in res["per_class"].values())
    assert tp + fn == int((~gt.iscrowd).sum())  # every non-crowd GT segment is a TP or an FN
    assert tp + fp <= pred.num_segments
    for r in res["per_class"].values():
        assert 0.0 <= r["pq"] <= r["sq"] <= 1.0


# ------------------------------------------------------------------------------------------ file API
def _write(folder: Path, name: str, ids: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id2rgb(ids)).save(folder / name)


def _dataset(tmp_path: Path, pred_ids: np.ndarray | None = None, pred_segs: list | None = None) -> dict:
    gt_ids = np.array([[5, 5, 0, 0], [7, 7, 7, 7], [7, 7, 7, 7], [9, 9, 7, 7]])
    gt_segs = [{"id": 5, "category_id": 20, "iscrowd": 0, "area": 2}, {"id": 7, "category_id": 10, "iscrowd": 0,
               "area": 10}, {"id": 9, "category_id": 30, "iscrowd": 1, "area": 2}]
    if pred_ids is None:
        pred_ids = np.array([[1000, 1000, 1000, 0], [77, 77, 77, 77], [77, 77, 77, 77], [77, 77, 77, 77]])
        pred_segs = [{"id": 1000, "category_id": 20}, {"id": 77, "category_id": 10}]
    _write(tmp_path / "gt", "a.png", gt_ids)
    _write(tmp_path / "pred", "a.png", pred_ids)
    cats = TABLE.to_coco()
    gt = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": cats,
          "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": gt_segs}]}
    pred = {"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": pred_segs}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    return {"gt_json": tmp_path / "gt.json", "pred_json": tmp_path / "pred.json", "gt_folder": tmp_path / "gt",
            "pred_folder": tmp_path / "pred"}


def test_pq_compute_files_hand_computed(tmp_path):
    res = pq_compute(**_dataset(tmp_path), workers=1)
    # person: inter 2, |pred| 3 (1 px on GT void) -> union 3 + 2 - 2 - 1 = 2 -> IoU 1.
    assert counts(res, 20) == (1, 0, 0) and res["per_class"][20]["iou_sum"] == 1.0
    # sky: pred 12 px, GT 10 px, inter 10, 2 pred px on crowd (car) -> union 12 -> 10/12.
    assert counts(res, 10) == (1, 0, 0) and res["per_class"][10]["iou_sum"] == 10 / 12
    assert counts(res, 30) == (0, 0, 0)
    assert res["All"]["n"] == 2 and res["All"]["pq"] == (1 + 10 / 12) / 2
    assert res["num_images"] == 1


def test_pq_compute_default_folders_and_dict_inputs(tmp_path):
    paths = _dataset(tmp_path)
    ref = pq_compute(**paths, workers=1)
    assert pq_compute(paths["gt_json"], paths["pred_json"], workers=1) == ref  # folders = JSON path minus .json
    gt, pred = json.loads(paths["gt_json"].read_text()), json.loads(paths["pred_json"].read_text())
    assert pq_compute(gt, pred, paths["gt_folder"], paths["pred_folder"], workers=1) == ref


def test_pq_compute_missing_prediction_names_the_image(tmp_path):
    paths = _dataset(tmp_path)
    paths["pred_json"].write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"no prediction for image 1 \(a.png\)"):
        pq_compute(**paths, workers=1)


def test_pq_compute_prediction_without_gt_is_an_error(tmp_path):
    paths = _dataset(tmp_path)
    pred = json.loads(paths["pred_json"].read_text())
    pred["annotations"].append({"image_id": 2, "file_name": "b.png", "segments_info": []})
    paths["pred_json"].write_text(json.dumps(pred))
    with pytest.raises(ValueError, match="have no ground truth"):
        pq_compute(**paths, workers=1)


def test_pq_compute_unknown_category(tmp_path):
    paths = _dataset(tmp_path, np.array([[3] * 4] * 4), [{"id": 3, "category_id": 99}])
    with pytest.raises(ValueError, match="unknown category id 99"):
        pq_compute(**paths, workers=1)


def test_pq_compute_png_ids_vs_segments_info(tmp_path):
    paths = _dataset(tmp_path, np.array([[3] * 4] * 3 + [[4] * 4]), [{"id": 3, "category_id": 10}])
    with pytest.raises(ValueError, match=r"PNG ids \[4\] are not in segments_info"):
        pq_compute(**paths, workers=1)
    paths = _dataset(tmp_path, np.array([[3] * 4] * 4), [{"id": 3, "category_id": 10}, {"id": 8, "category_id": 20}])
    with pytest.raises(ValueError, match=r"segments_info ids \[8\] have no pixel"):
        pq_compute(**paths, workers=1)
    paths = _dataset(tmp_path, np.array([[3] * 4] * 4), [{"id": 3, "category_id": 10}, {"id": 3, "category_id": 20}])
    with pytest.raises(ValueError, match="duplicate"):
        pq_compute(**paths, workers=1)


def test_pq_compute_size_mismatch_names_file_and_fix(tmp_path):
    paths = _dataset(tmp_path, np.array([[3] * 8] * 4), [{"id": 3, "category_id": 10}])
    with pytest.raises(ValueError, match=r"pred[/\\]a\.png is 8x4 .* ground truth is 4x4.*nearest"):
        pq_compute(**paths, workers=1)


def test_pq_compute_missing_file(tmp_path):
    paths = _dataset(tmp_path)
    (paths["pred_folder"] / "a.png").unlink()
    with pytest.raises(ValueError, match="missing"):
        pq_compute(**paths, workers=1)


@pytest.mark.parametrize("workers", [1, 2])
def test_pq_compute_corrupt_png_names_the_file(tmp_path, workers):
    paths = _dataset(tmp_path)
    png_file = paths["pred_folder"] / "a.png"
    png_file.write_bytes(png_file.read_bytes()[:40])  # truncated inside the first chunks
    with pytest.raises(ValueError, match=r"image 1 .*\(prediction\): cannot decode .*a\.png.*regenerate it"):
        pq_compute(**paths, workers=workers)


def test_pq_compute_warns_on_wrong_gt_area(tmp_path):
    paths = _dataset(tmp_path)
    gt = json.loads(paths["gt_json"].read_text())
    gt["annotations"][0]["segments_info"][0]["area"] = 3
    paths["gt_json"].write_text(json.dumps(gt))
    with pytest.warns(UserWarning, match="area"):
        pq_compute(**paths, workers=1)


def test_cli_evaluate_prints_tables_and_writes_json(tmp_path, capsys):
    paths = _dataset(tmp_path)
    parser = argparse.ArgumentParser(prog="panoptic")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "res" / "pq.json"
    args = parser.parse_args(["evaluate", "--gt-json", str(paths["gt_json"]), "--gt-folder", str(paths["gt_folder"]),
                              "--pred-json", str(paths["pred_json"]), "--pred-folder", str(paths["pred_folder"]),
                              "--json", str(out), "--workers", "1"])
    assert args.func is run
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "| All" in text and "| Things" in text and "| person" in text
    saved = json.loads(out.read_text())
    assert saved["All"]["n"] == 2 and "20" in saved["per_class"]
    args.pred_json = tmp_path / "nope.json"
    assert run(args) == 2
    assert "error" in capsys.readouterr().err


def test_format_pq_results():
    text = format_pq_results(PanopticQuality(TABLE).compute())
    assert text.count("\n") > 5 and "| sky" in text


# ------------------------------------------------------------------------------------------ PNG decoding
def test_pq_compute_same_with_every_decode_path(tmp_path, monkeypatch):
    from panoptic import png

    paths = _dataset(tmp_path)
    monkeypatch.setattr(png, "_CHECKED", {})
    ref = pq_compute(**paths, workers=1)
    for checked in ({"native": False}, {"native": False, "direct": False}):  # Pillow direct, then public
        monkeypatch.setattr(png, "_CHECKED", dict(checked))
        assert pq_compute(**paths, workers=1) == ref
    monkeypatch.setattr(png, "_deflate", None)  # zlib inflate + the C pass (Pillow without the extension)
    monkeypatch.setattr(png, "_CHECKED", {})
    assert pq_compute(**paths, workers=1) == ref
    assert png._CHECKED == ({"native": True} if png._native is not None else {"direct": True})


def test_the_backend_switch_turns_the_native_png_decoder_off(tmp_path):
    from panoptic import ops, png

    paths = _dataset(tmp_path)
    ref = pq_compute(**paths, workers=1)
    with ops.backend("torch"):
        assert not png.decoder_name().startswith("native")
        assert pq_compute(**paths, workers=1) == ref
