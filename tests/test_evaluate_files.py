"""The file evaluator with every metric, sharded evaluation and its exact merge, the PNG-format and empty-input
errors, and the atomic writes of ``panoptic evaluate``."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic import CategoryTable
from panoptic import atomic as atomic_module
from panoptic.cli import main as panoptic_main
from panoptic.errors import PanopticError
from panoptic.evaluation import MetricConfig, PanopticQuality, pq_compute
from panoptic.evaluation.files import EmptyEvaluationError, PngFormatError, load_coco_pair
from panoptic.evaluation.shards import merge_stats
from panoptic.evaluation.streaming import MergeError
from panoptic.formats import id2rgb

CATS = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 11, "name": "person", "isthing": 1},
        {"id": 2, "name": "road", "isthing": 0}, {"id": 12, "name": "car", "isthing": 1}]


def _dataset(folder: Path, n: int = 7, seed: int = 0) -> dict[str, Path]:
    """``n`` random 24x40 GT/prediction pairs (crowd, void, misses) as COCO-panoptic folders."""
    rng = np.random.default_rng(seed)
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir(parents=True)
    gt_anns, pred_anns = [], []
    for i in range(n):
        coarse = rng.integers(0, 6, (3, 5))
        gt = np.kron(coarse, np.ones((8, 8), dtype=np.int64))
        gt[rng.random(gt.shape) < 0.03] = 0
        segs = []
        for sid in np.unique(gt[gt > 0]).tolist():
            cat = [1, 2, 11, 12, 11, 12][sid % 6]
            segs.append({"id": sid, "category_id": cat, "iscrowd": int(sid == 4 and i % 3 == 0)})
        pred = np.roll(gt, int(rng.integers(-3, 4)), axis=1)
        pred[rng.random(gt.shape) < 0.05] = 0
        psegs = [{"id": sid + 100, "category_id": [1, 2, 11, 12, 11, 12][(sid + i) % 6 if sid == 5 else sid % 6]}
                 for sid in np.unique(pred[pred > 0]).tolist()]
        pred = np.where(pred > 0, pred + 100, 0)
        Image.fromarray(id2rgb(gt)).save(folder / "gt" / f"{i}.png")
        Image.fromarray(id2rgb(pred)).save(folder / "pred" / f"{i}.png")
        gt_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
        pred_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": psegs})
    (folder / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATS}))
    (folder / "pred.json").write_text(json.dumps({"annotations": pred_anns, "categories": CATS}))
    return {"gt_json": folder / "gt.json", "pred_json": folder / "pred.json", "gt_folder": folder / "gt",
            "pred_folder": folder / "pred"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return _dataset(tmp_path_factory.mktemp("eval_files"))


def _cli(*args: str) -> int:
    return panoptic_main(["evaluate", "--no-progress", *args])


def _base(data: dict[str, Path]) -> list[str]:
    return ["--gt-json", str(data["gt_json"]), "--pred-json", str(data["pred_json"])]


# --------------------------------------------------------------------------------- every metric, files
def test_files_with_every_metric_equal_streaming_and_any_worker_count(data):
    config = MetricConfig.all(boundary_ratio=0.05)
    one = pq_compute(**data, workers=1, config=config)
    assert pq_compute(**data, workers=2, config=config) == one
    assert {"pq_dagger", "boundary_pq", "pc"} <= set(one)
    gt = json.loads(data["gt_json"].read_text())
    pred = {a["image_id"]: a for a in json.loads(data["pred_json"].read_text())["annotations"]}
    table = CategoryTable.from_coco(CATS)
    stream = PanopticQuality(table, category_order=[c["id"] for c in CATS], config=config)
    for a in gt["annotations"]:
        p = pred[a["image_id"]]
        g, q, ids = load_coco_pair(data["gt_folder"] / a["file_name"], a["segments_info"],
                                   data["pred_folder"] / p["file_name"], p["segments_info"], table)
        stream.update(g, q, gt_ids=ids)
    assert stream.compute() == one  # same statistics and summation order from the C bands and the id maps
    plain = pq_compute(**data, workers=1)
    assert {k: one[k] for k in plain} == plain  # asking for more metrics leaves PQ bit-identical


def test_native_and_numpy_file_paths_agree(data, monkeypatch):
    from panoptic.evaluation import _boundary as boundary
    from panoptic.evaluation import files

    config = MetricConfig.all(boundary_ratio=0.1)
    native = pq_compute(**data, workers=1, config=config)
    monkeypatch.setattr(files, "_native", None)
    assert pq_compute(**data, workers=1, config=config) == native  # LUT + np.take + bincount, C bands
    monkeypatch.setattr(boundary, "_native", None)
    assert pq_compute(**data, workers=1, config=config) == native  # and the numpy band specification


# --------------------------------------------------------------------------------- shards and merge
def test_shards_merge_bit_identical_and_fail_on_missing_or_duplicate(data, tmp_path, capsys):
    assert _cli(*_base(data), "--metrics", "all", "--json", str(tmp_path / "one.json")) == 0
    stats = []
    for i in range(3):
        stats.append(str(tmp_path / f"s{i}.json"))
        assert _cli(*_base(data), "--metrics", "all", "--shard", f"{i}/3", "--stats", stats[-1], "--workers", "1") == 0
    assert _cli("--merge", *stats, "--json", str(tmp_path / "merged.json")) == 0
    assert (tmp_path / "merged.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    capsys.readouterr()
    assert _cli("--merge", *stats[:2]) == 2
    assert "in no statistics file" in capsys.readouterr().err
    assert _cli("--merge", *stats, stats[1]) == 2
    assert "is in both" in capsys.readouterr().err
    with pytest.raises(MergeError, match="not a"):
        merge_stats([data["gt_json"]])
    assert _cli(*_base(data), "--shard", "3/3", "--stats", str(tmp_path / "x.json")) == 2
    assert _cli(*_base(data), "--shard", "0/2") == 2  # a shard needs --stats
    assert "--stats" in capsys.readouterr().err


def test_per_class_tables_sorted_worst_first(data, tmp_path, capsys):
    out = tmp_path / "per_class.csv"
    assert _cli(*_base(data), "--metrics", "pq,pc", "--per-class", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] and set(rows[0]) >= {"pq", "pc", "tp", "fp", "fn", "name", "kind"}
    seen = [float(r["pq"]) for r in rows if int(r["tp"]) + int(r["fp"]) + int(r["fn"]) > 0]
    assert seen == sorted(seen)
    capsys.readouterr()
    assert _cli(*_base(data), "--per-class") == 0
    text = capsys.readouterr().out
    assert "| id | name | kind | PQ |" in text


# --------------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("kind", ["L", "I;16", "P", "jpeg"])
def test_non_rgb_png_names_the_file_and_the_fix(tmp_path, kind):
    paths = _dataset(tmp_path, n=2)
    target = paths["pred_folder"] / "1.png"
    grey = np.array(Image.open(target).convert("L"))
    if kind == "jpeg":
        Image.fromarray(grey).save(target, format="JPEG")
    elif kind == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(target)
    else:
        Image.fromarray(grey).convert(kind).save(target)
    with pytest.raises(PngFormatError, match=r"1\.png is .*not an RGB-encoded COCO-panoptic PNG.*id2rgb"):
        pq_compute(**paths, workers=1)


def test_empty_ground_truth_and_predictions_is_an_error_unless_allowed(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "gt" / "a.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "pred" / "a.png")
    ann = [{"image_id": 1, "file_name": "a.png", "segments_info": []}]
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": ann, "categories": CATS}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": ann}))
    with pytest.raises(EmptyEvaluationError, match="allow_empty"):
        pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1)
    assert issubclass(EmptyEvaluationError, PanopticError)
    assert pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", workers=1, allow_empty=True)["All"]["n"] == 0
    args = ["--gt-json", str(tmp_path / "gt.json"), "--pred-json", str(tmp_path / "pred.json")]
    assert _cli(*args) == 2 and "--allow-empty" in capsys.readouterr().err
    assert _cli(*args, "--allow-empty") == 0


# --------------------------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("option", ["--json", "--per-class", "--stats"])
def test_failed_write_leaves_the_previous_file_intact(data, tmp_path, monkeypatch, capsys, option):
    out = tmp_path / ("out.csv" if option == "--per-class" else "out.json")
    out.write_text("previous")

    def fail(src, dst):  # the rename of the finished temporary file fails (e.g. disk full)
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(atomic_module.os, "replace", fail)
    assert _cli(*_base(data), option, str(out)) == 2
    assert "No space left" in capsys.readouterr().err
    assert out.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temporary file left behind
