"""PQ evaluation speed: our file-based and streaming evaluators vs panopticapi and hotcoco, same images, same run.

Generates ``N`` Cityscapes-like 1024x2048 COCO-panoptic GT/prediction pairs (19 categories, 20-60 segments,
some crowd and void, random 24-bit prediction ids, predictions perturbed so PQ is about 0.5-0.7) into a
temporary folder, then times, interleaved (A B C D E, A B C D E, ...; medians reported):

* ``ours_files``: :func:`panoptic.evaluation.pq_compute` (JSON + PNG, PQ only, a pool of ``--workers`` threads);
* ``variants``: the same with PQ-dagger, Boundary PQ and Parsing Covering too (``MetricConfig.all()``);
* ``ours_stream``: :class:`panoptic.evaluation.PanopticQuality` on in-memory results (decoded before the timer);
* ``panopticapi``: ``panopticapi.evaluation.pq_compute`` with its default processes (``cpu_count``), in a fresh
  interpreter (skipped with a message if not installed: ``pip install --no-deps panopticapi-lite``);
* ``hotcoco``: ``hotcoco.panoptic.pq_compute`` (a Rust evaluator; ``RAYON_NUM_THREADS=--workers``) in a fresh
  interpreter. Benchmark-only, not a dependency of panoptic: ``pip install hotcoco`` (tested with 1.3.0) or
  ``pip install -e ".[benchmark]"``; skipped with a message when missing. hotcoco needs integer image ids.

Both external evaluators time themselves (interpreter start-up excluded). ``max_abs_diff`` compares every
PQ/SQ/RQ value of ours with panopticapi (or hotcoco when panopticapi is missing); ``hotcoco_max_abs_diff``
compares hotcoco with ours; when hotcoco's counts differ, the images where they differ are evaluated one by one
and listed (``hotcoco_disagreements``).

Usage::

    python benchmarks/pq_speed.py --quick
    python benchmarks/pq_speed.py --n 200 --workers 2 --json pq_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from panoptic import CategoryTable
from panoptic import png as png_module
from panoptic.evaluation import MetricConfig, PanopticQuality, pq_compute
from panoptic.evaluation.files import load_coco_pair
from panoptic.formats import id2rgb, segment_bboxes

H, W = 1024, 2048


def _smooth_field(rng: np.random.Generator, k: int, grid: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """``(k, h, w)`` smooth random fields: random values on a coarse grid, upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((1, k, *grid)).astype(np.float32))
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]


def _make_gt(rng: np.random.Generator, table: CategoryTable, h: int, w: int) -> tuple[np.ndarray, list[dict]]:
    """One GT image: ``(H, W)`` ids (Cityscapes style: stuff = category id, thing = id * 1000 + k) + segments."""
    stuff = [c for c in table.categories if not c.isthing]
    things = [c for c in table.categories if c.isthing]
    n_stuff = int(rng.integers(7, 11))
    stuff_sel = rng.choice(len(stuff), n_stuff, replace=False)
    field = _smooth_field(rng, n_stuff, (6, 12), h, w)
    field += torch.linspace(-1.5, 1.5, h)[None, :, None] * torch.from_numpy(
        rng.standard_normal(n_stuff).astype(np.float32))[:, None, None]
    # Running argmax over the fields (much faster than argmax(0) over a (K, H, W) tensor on CPU).
    best, lab_t = field[0].clone(), torch.zeros(h, w, dtype=torch.int64)
    for k in range(1, n_stuff):
        better = field[k] > best
        best = torch.where(better, field[k], best)
        lab_t[better] = k
    lab = lab_t.numpy()
    ids = np.asarray([stuff[i].id for i in stuff_sel], dtype=np.int64)[lab]
    # Things: blobs = thresholded smooth fields inside random boxes, painted back to front.
    n_things = int(rng.integers(14, 52))
    counters: dict[int, int] = {}
    crowd_cats: set[int] = set()
    iscrowd: dict[int, int] = {}
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    for _ in range(n_things):
        cat = things[int(rng.integers(len(things)))]
        bh = int(rng.integers(h // 40, h // 4))
        bw = int(rng.integers(w // 80, w // 6))
        y0 = int(rng.integers(h // 4, h - bh))
        x0 = int(rng.integers(0, w - bw))
        cy, cx = y0 + bh / 2, x0 + bw / 2
        sub = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        r = ((yy[sub[0]] - cy) / (bh / 2)) ** 2 + ((xx[:, sub[1]] - cx) / (bw / 2)) ** 2
        wobble = _smooth_field(rng, 1, (3, 3), bh, bw)[0].numpy() * 0.3
        m = r + wobble < 1.0
        crowd = cat.id not in crowd_cats and rng.random() < 0.06
        if crowd:
            crowd_cats.add(cat.id)
            sid = cat.id * 1000
        else:
            counters[cat.id] = counters.get(cat.id, 0) + 1
            sid = cat.id * 1000 + counters[cat.id]
        ids[sub][m] = sid
        iscrowd[sid] = int(crowd)
    # Void: an ego-vehicle band and a few blobs.
    band = int(rng.integers(h // 20, h // 8))
    ids[h - band:] = 0
    blobs = _smooth_field(rng, 1, (8, 16), h, w)[0].numpy() > 2.0
    ids[blobs] = 0
    return ids, _segments(ids, iscrowd)


def _segments(ids: np.ndarray, iscrowd: dict[int, int]) -> list[dict[str, Any]]:
    """GT ``segments_info`` (id order) with area and bbox computed from the ``(H, W)`` id map."""
    counts = np.bincount(ids.reshape(-1))
    present = np.nonzero(counts)[0]
    present = present[present != 0]
    lut = np.zeros(counts.size, dtype=np.int64)
    lut[present] = np.arange(1, present.size + 1)
    boxes = segment_bboxes(torch.from_numpy(lut[ids]), int(present.size)).tolist()
    return [{"id": int(sid), "category_id": int(sid if sid < 1000 else sid // 1000),
             "iscrowd": iscrowd.get(int(sid), 0),
             "area": int(counts[sid]), "bbox": boxes[k]} for k, sid in enumerate(present.tolist())]


def _make_pred(rng: np.random.Generator, gt: np.ndarray, gt_segs: list[dict], table: CategoryTable
               ) -> tuple[np.ndarray, list[dict]]:
    """Perturb a GT map: smooth warp, dropped/relabelled/eroded things, FP blobs, random 24-bit ids."""
    h, w = gt.shape
    disp = _smooth_field(rng, 2, (4, 8), h, w) * float(rng.uniform(6, 14))
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    sy = (gy + disp[0]).round().clamp(0, h - 1).long()
    sx = (gx + disp[1]).round().clamp(0, w - 1).long()
    src = torch.from_numpy(gt)[sy, sx].numpy()
    things = [c.id for c in table.categories if c.isthing]
    stuff = [c.id for c in table.categories if not c.isthing]
    cat_of: dict[int, int] = {}
    out = np.zeros_like(src)
    seg_ids = [s["id"] for s in gt_segs]
    new_ids = np.unique(rng.integers(1, 1 << 24, size=len(seg_ids) + 64))
    rng.shuffle(new_ids)
    nxt = 0
    # Map each GT segment to a prediction segment (or drop/merge it).
    lut: dict[int, int] = {0: 0}
    for s in gt_segs:
        sid, cat = s["id"], s["category_id"]
        r = rng.random()
        if cat in things and r < 0.2:
            lut[sid] = 0  # missed
            continue
        pid = int(new_ids[nxt])
        nxt += 1
        if cat in things and r < 0.32:
            cat = int(rng.choice(things))  # wrong class
        elif cat in stuff and r < 0.15:
            cat = int(rng.choice(stuff))
        lut[sid] = pid
        cat_of[pid] = cat
    keys = np.asarray(list(lut.keys()))
    vals = np.asarray(list(lut.values()))
    order = np.argsort(keys)
    out = vals[order][np.searchsorted(keys[order], src)]
    # Stuff-coloured holes become void or neighbouring stuff; a few FP blobs with thing categories.
    fp = _smooth_field(rng, 1, (10, 20), h, w)[0].numpy() > 2.1
    if fp.any():
        pid = int(new_ids[nxt])
        nxt += 1
        out[fp] = pid
        cat_of[pid] = int(rng.choice(things))
    holes = _smooth_field(rng, 1, (12, 24), h, w)[0].numpy() > 2.3
    out[holes] = 0
    present = set(np.unique(out).tolist())
    cat_of = {k: v for k, v in cat_of.items() if k in present}
    segs = [{"id": int(k), "category_id": int(v)} for k, v in cat_of.items()]
    rng.shuffle(segs)
    return out, segs


def make_dataset(folder: Path, n: int, seed: int = 0, h: int = H, w: int = W) -> dict[str, Path]:
    """Write ``n`` GT/prediction pairs as COCO-panoptic JSON + PNG folders under ``folder``."""
    table = CategoryTable.cityscapes()
    rng = np.random.default_rng(seed)
    paths = {"gt_json": folder / "gt.json", "pred_json": folder / "pred.json",
             "gt_folder": folder / "gt", "pred_folder": folder / "pred"}
    paths["gt_folder"].mkdir(parents=True, exist_ok=True)
    paths["pred_folder"].mkdir(parents=True, exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for i in range(n):
        name = f"img_{i:05d}"
        gt, gt_segs = _make_gt(rng, table, h, w)
        pred, pred_segs = _make_pred(rng, gt, gt_segs, table)
        Image.fromarray(id2rgb(gt)).save(paths["gt_folder"] / f"{name}.png")
        Image.fromarray(id2rgb(pred)).save(paths["pred_folder"] / f"{name}.png")
        images.append({"id": i, "file_name": f"{name}.jpg", "height": h, "width": w})
        gt_anns.append({"image_id": i, "file_name": f"{name}.png", "segments_info": gt_segs})
        pred_anns.append({"image_id": i, "file_name": f"{name}.png", "segments_info": pred_segs})
    cats = table.to_coco()
    paths["gt_json"].write_text(json.dumps({"images": images, "annotations": gt_anns, "categories": cats}))
    paths["pred_json"].write_text(json.dumps({"images": images, "annotations": pred_anns, "categories": cats}))
    return paths


def _max_abs_diff(a: dict, b: dict) -> float:
    diff = 0.0
    for name in ("All", "Things", "Stuff"):
        if a[name]["n"] != b[name]["n"]:
            return math.inf
        for k in ("pq", "sq", "rq"):
            diff = max(diff, abs(a[name][k] - b[name][k]))
    for cid, row in b["per_class"].items():
        for k in ("pq", "sq", "rq"):
            diff = max(diff, abs(a["per_class"][int(cid)][k] - row[k]))
    return diff


_ORACLE = """
import contextlib, io, json, sys, time
import numpy
from panopticapi.evaluation import pq_compute
gt_json, pred_json, gt_folder, pred_folder = sys.argv[1:5]
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    res = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
dt = time.perf_counter() - t
res = json.loads(json.dumps(res, default=float))
print(json.dumps({"seconds": dt, "results": res, "numpy": numpy.__version__}))
"""

_HOTCOCO = """
import contextlib, io, json, sys, time
import hotcoco
from hotcoco.panoptic import pq_compute
gt_json, pred_json, gt_folder, pred_folder = sys.argv[1:5]
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    res = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
dt = time.perf_counter() - t
res = json.loads(json.dumps({k: res[k] for k in ("All", "Things", "Stuff", "per_class")}, default=float))
print(json.dumps({"seconds": dt, "results": res, "version": getattr(hotcoco, "__version__", "")}))
"""

_MISSING = {"panopticapi": "pip install --no-deps panopticapi-lite", "hotcoco": "pip install hotcoco"}


def _run_external(name: str, script: str, python: str, paths: dict[str, Path], env: dict[str, str] | None = None
                  ) -> tuple[float, dict, str] | None:
    """Time an external ``pq_compute`` in a fresh interpreter (its own timer: start-up excluded)."""
    cmd = [python, "-c", script, *(str(paths[k]) for k in ("gt_json", "pred_json", "gt_folder", "pred_folder"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        if f"No module named '{name}'" in proc.stderr:
            print(f"{name} is not installed for {python}, skipped: {_MISSING[name]}", file=sys.stderr)
            return None
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["seconds"], out["results"], out.get("numpy") or out.get("version", "")


def _run_oracle(python: str, paths: dict[str, Path]) -> tuple[float, dict, str] | None:
    return _run_external("panopticapi", _ORACLE, python, paths)


def _run_hotcoco(python: str, paths: dict[str, Path], workers: int) -> tuple[float, dict, str] | None:
    return _run_external("hotcoco", _HOTCOCO, python, paths, {"RAYON_NUM_THREADS": str(workers)})


def _counts_differ(ours: dict, other: dict) -> bool:
    return any((row["tp"], row["fp"], row["fn"]) != tuple(other["per_class"][str(cid)][k] for k in ("tp", "fp", "fn"))
               for cid, row in ours["per_class"].items() if str(cid) in other["per_class"])


def _hotcoco_disagreements(python: str, paths: dict[str, Path], workers: int, limit: int = 5) -> list[dict]:
    """Images (first ``limit``) where hotcoco's per-class TP/FP/FN differ from ours, each evaluated alone."""
    gt = json.loads(paths["gt_json"].read_text())
    pred = json.loads(paths["pred_json"].read_text())
    pred_by_id = {a["image_id"]: a for a in pred["annotations"]}
    found: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pq_one_") as d:
        one = {"gt_json": Path(d) / "gt.json", "pred_json": Path(d) / "pred.json", "gt_folder": paths["gt_folder"],
               "pred_folder": paths["pred_folder"]}
        for a in gt["annotations"]:
            one["gt_json"].write_text(json.dumps({**gt, "annotations": [a]}))
            one["pred_json"].write_text(json.dumps({**pred, "annotations": [pred_by_id[a["image_id"]]]}))
            ours = pq_compute(**one, workers=1, allow_empty=True)
            got = _run_hotcoco(python, one, workers)
            if got is not None and (_counts_differ(ours, got[1]) or _max_abs_diff(ours, got[1]) > 1e-12):
                found.append({"image_id": a["image_id"], "file_name": a["file_name"],
                              "max_abs_diff": _max_abs_diff(ours, got[1])})
                if len(found) >= limit:
                    break
    return found


# Over 60 lines: a benchmark script read top to bottom (arguments, one interleaved timing loop, the report).
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="number of images (default 100; 16 with --quick)")
    p.add_argument("--quick", action="store_true", help="small run (< 60 s)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers to this JSON file")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved repetitions (A B C A B C ...); medians are reported (default 3; 1 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default=f"{H}x{W}", help="image size HxW (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes of our file evaluator and hotcoco's threads (default: %(default)s, the target)")
    p.add_argument("--decoder", choices=["auto", "pillow"], default="auto",
                   help="PNG decoder of our file evaluator: auto (the native one when built) or pillow (fallback)")
    p.add_argument("--keep", type=Path, default=None, help="generate into (or reuse) this folder instead of a temp one")
    p.add_argument("--oracle-python", default=sys.executable,
                   help="interpreter that runs panopticapi (e.g. a venv with its pinned numpy<2); default: this one")
    p.add_argument("--hotcoco-python", default=sys.executable, help="interpreter that runs hotcoco; default: this one")
    p.add_argument("--no-external", action="store_true", help="time our evaluators only")
    args = p.parse_args(argv)
    n = args.n or (16 if args.quick else 100)
    repeat = args.repeat or (1 if args.quick else 3)
    h, w = (int(v) for v in args.size.lower().split("x"))

    with contextlib.ExitStack() as stack:
        if args.decoder == "pillow":
            png_module._CHECKED["native"] = False  # as if the C extension had not been built
        if args.keep is not None:
            folder = args.keep
            gt_file = folder / "gt.json"
            if not gt_file.exists() or len(json.loads(gt_file.read_text())["annotations"]) != n:
                shutil.rmtree(folder, ignore_errors=True)
                t = time.perf_counter()
                make_dataset(folder, n, args.seed, h, w)
                print(f"generated {n} pairs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            paths = {"gt_json": folder / "gt.json", "pred_json": folder / "pred.json",
                     "gt_folder": folder / "gt", "pred_folder": folder / "pred"}
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pq_speed_")))
            t = time.perf_counter()
            paths = make_dataset(folder, n, args.seed, h, w)
            print(f"generated {n} pairs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        gt_json = json.loads(paths["gt_json"].read_text())
        pred_json = json.loads(paths["pred_json"].read_text())
        table = CategoryTable.from_coco(gt_json["categories"])
        order = [c["id"] for c in gt_json["categories"]]

        # Pre-decode for the streaming evaluator (outside the timer).
        pred_by_id = {a["image_id"]: a for a in pred_json["annotations"]}
        pairs = [load_coco_pair(paths["gt_folder"] / g["file_name"], g["segments_info"],
                                paths["pred_folder"] / pred_by_id[g["image_id"]]["file_name"],
                                pred_by_id[g["image_id"]]["segments_info"], table)
                 for g in gt_json["annotations"]]

        keys = ("files", "variants", "stream", "panopticapi", "hotcoco")
        times: dict[str, list[float]] = {k: [] for k in keys}
        ref = hot = None
        oracle_numpy = hot_version = ""
        for _ in range(repeat):
            t = time.perf_counter()
            ours = pq_compute(**paths, workers=args.workers)
            times["files"].append(time.perf_counter() - t)

            t = time.perf_counter()
            variants = pq_compute(**paths, workers=args.workers, config=MetricConfig.all())
            times["variants"].append(time.perf_counter() - t)

            t = time.perf_counter()
            metric = PanopticQuality(table, category_order=order)
            for gt, pred, gt_ids in pairs:
                metric.update(gt, pred, gt_ids=gt_ids)
            stream = metric.compute()
            times["stream"].append(time.perf_counter() - t)

            if args.no_external:
                continue
            got = _run_oracle(args.oracle_python, paths)
            if got is not None:
                times["panopticapi"].append(got[0])
                ref, oracle_numpy = got[1], got[2]
            got = _run_hotcoco(args.hotcoco_python, paths, args.workers)
            if got is not None:
                times["hotcoco"].append(got[0])
                hot, hot_version = got[1], got[2]

    med = {k: statistics.median(v) if v else math.nan for k, v in times.items()}
    best = {k: min(v) if v else math.nan for k, v in times.items()}
    base = ref or hot or ours
    diff = max(_max_abs_diff(ours, base), _max_abs_diff(stream, base), _max_abs_diff(variants, base))
    hot_diff = _max_abs_diff(ours, hot) if hot else math.nan
    disagreements: list[dict] = []
    if hot and (_counts_differ(ours, hot) or hot_diff > 1e-12):
        disagreements = _hotcoco_disagreements(args.hotcoco_python, paths, args.workers)
    out = {"n_images": n, "size": f"{h}x{w}", "workers": args.workers, "repeat": repeat,
           "ours_files_s": med["files"], "variants_s": med["variants"], "ours_stream_s": med["stream"],
           "panopticapi_s": med["panopticapi"], "hotcoco_s": med["hotcoco"],
           "variants_over_pq": med["variants"] / med["files"], "hotcoco_over_ours": med["hotcoco"] / med["files"],
           "max_abs_diff": diff, "hotcoco_max_abs_diff": hot_diff, "hotcoco_disagreements": disagreements,
           "ours_files_min_s": best["files"], "variants_min_s": best["variants"], "ours_stream_min_s": best["stream"],
           "panopticapi_min_s": best["panopticapi"], "hotcoco_min_s": best["hotcoco"],
           "pq_all": ours["All"]["pq"], "cpu_count": os.cpu_count(), "numpy": np.__version__,
           "oracle_numpy": oracle_numpy, "hotcoco_version": hot_version, "decoder": png_module.decoder_name()}
    print(f"{n} images of {h}x{w}, {args.workers} workers on {os.cpu_count()} cores; PQ All {ours['All']['pq']:.4f} "
          f"Things {ours['Things']['pq']:.4f} Stuff {ours['Stuff']['pq']:.4f}; numpy {np.__version__} "
          f"(panopticapi's: {oracle_numpy or 'n/a'}); hotcoco {hot_version or 'n/a'}; PNG decoder {out['decoder']}")
    print()
    print(f"| evaluator | median s ({repeat} runs) | min s | ms/image | speed-up vs panopticapi |")
    print("|---|---|---|---|---|")
    for name, key in (("panopticapi pq_compute (Pool of cpu_count)", "panopticapi"),
                      (f"hotcoco pq_compute ({args.workers} threads)", "hotcoco"),
                      (f"ours pq_compute (files, {args.workers} workers)", "files"),
                      (f"ours pq_compute + PQ-dagger, Boundary PQ, PC ({args.workers} workers)", "variants"),
                      ("ours PanopticQuality (in-memory, 1 process)", "stream")):
        print(f"| {name} | {med[key]:.3f} | {best[key]:.3f} | {1000 * med[key] / n:.1f} | "
              f"{med['panopticapi'] / med[key]:.2f}x |")
    print(f"\nall three extra metrics cost {out['variants_over_pq']:.2f}x plain PQ; hotcoco takes "
          f"{out['hotcoco_over_ours']:.2f}x our time")
    print(f"max |ours - reference| = {diff:.3g}; max |ours - hotcoco| = {hot_diff:.3g}")
    for d in disagreements:
        print(f"hotcoco disagrees on image {d['image_id']} ({d['file_name']}): max abs diff {d['max_abs_diff']:.3g}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
