"""`panoptic compare`: rows, oracle inputs, tables, cache keys, the figure, and one tiny end-to-end run."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from conftest import result_from_labels, tiny_table

from panoptic.compare import CompareConfig, run_compare
from panoptic.compare.config import network_of
from panoptic.compare.figure import comparison_figure
from panoptic.compare.intervals import pq_from_stats
from panoptic.compare.report import checks, to_csv, to_markdown
from panoptic.compare.rows import ABLATION_FLAGS, Inputs, ablation_rows, gt_boxes, gt_semantic, main_rows
from panoptic.compare.training import cache_key
from panoptic.data import generate_scene
from panoptic.data.targets import build_target
from panoptic.engine.config import ConfigError, DataConfig
from panoptic.evaluation import PanopticQuality
from panoptic.fusion import HeuristicFusion, UPSNetFusion
from panoptic.structures import Instances


# ------------------------------------------------------------------------------------------- config
def test_config_validates_and_orders_models():
    cfg = CompareConfig(models=("upsnet", "mrcnn_psp"))
    assert cfg.models == ("mrcnn_psp", "upsnet")  # table order whatever order was typed
    assert cfg.networks == ("upsnet", "mrcnn_psp")
    assert CompareConfig(models=("upsnet_cp",)).networks == ("upsnet",)  # CP reuses UPSNet's weights
    assert network_of("upsnet_cp") == "upsnet"
    with pytest.raises(ValueError, match="unknown model id"):
        CompareConfig(models=("upsnet", "bogus"))
    with pytest.raises(ValueError, match="repeat"):
        CompareConfig(models=("upsnet", "upsnet"))
    with pytest.raises(ValueError, match="fractions"):
        CompareConfig(steps=(0.9, 0.5))


def test_train_config_shares_schedule_and_maps_builders():
    cfg = CompareConfig(iterations=200, steps=(0.5, 0.75), backbone="resnet34")
    a, b = cfg.train_config("upsnet", "x"), cfg.train_config("mrcnn_psp", "x")
    assert (a.model, b.model) == ("upsnet_cpu_small", "mrcnn_psp_cpu_small")
    assert a.optim == b.optim and a.optim.steps == (100, 150) and a.iterations == b.iterations == 200
    assert a.model_kwargs["backbone"] == "resnet34" and a.data == b.data
    assert CompareConfig(preset="r50_fpn").train_config("upsnet_c", "x").model == "upsnet_c"


def test_cache_key_tracks_weights_not_logging(tmp_path):
    from panoptic.compare.fingerprint import FileHashes

    (tmp_path / "d.json").write_text("{}")
    hashes = FileHashes(tmp_path / "h.json")

    def key(c, threads=1):
        return cache_key(c, [tmp_path / "d.json"], hashes, threads=threads, device="cpu")

    cfg = CompareConfig(iterations=100)
    base = cfg.train_config("upsnet", "out-a")
    assert key(base) == key(CompareConfig(iterations=100, progress=False).train_config("upsnet", "out-b"))
    assert key(base) != key(CompareConfig(iterations=101).train_config("upsnet", "out-a"))
    assert key(base) != key(cfg.train_config("upsnet", "out-a", seed_index=1))  # each seed run has its own entry
    assert key(base) != key(CompareConfig(iterations=100, seed=1).train_config("upsnet", "out-a"))
    assert key(base) != key(cfg.train_config("upsnet_c", "out-a"))
    other_data = CompareConfig(iterations=100, data=DataConfig(synthetic_n=10)).train_config("upsnet", "out-a")
    assert key(base) != key(other_data)
    assert key(base) != key(base, threads=2)


# --------------------------------------------------------------------------------------------- rows
def test_main_rows_use_the_right_networks_and_fusions():
    table = tiny_table()
    head = UPSNetFusion(table, stuff_area_limit=7)
    heur = HeuristicFusion(table, "upsnet", stuff_area_limit=7)
    fusions = {"upsnet": head, "upsnet_c": heur, "mrcnn_psp": heur}
    rows = main_rows(("mrcnn_psp", "upsnet_c", "upsnet_cp", "upsnet"), fusions,
                     {"mrcnn_psp": "A", "upsnet_c": "B", "upsnet_cp": "C", "upsnet": "D"})
    by = {r.key: r for r in rows}
    assert by["upsnet_cp"].network == "upsnet" and isinstance(by["upsnet_cp"].fusion, HeuristicFusion)
    assert by["upsnet_cp"].fusion.stuff_area_limit == 7 and by["upsnet"].fusion is head
    assert not any(r.flags or r.needs_features for r in rows)


def test_ablation_rows_follow_table_6():
    table = tiny_table()
    head = UPSNetFusion(table, stuff_area_limit=5, assignment_threshold=0.6)
    rows = ablation_rows(head, have_upsnet_c=True)
    assert [r.label for r in rows] == ["baseline", "+ panoptic loss", "+ ICA", "+ unknown", "+ GT boxes", "+ GT ICA",
                                       "+ GT semantic"]
    assert rows[0].network == "upsnet_c" and all(r.network == "upsnet" for r in rows[1:])
    assert all(set(r.flags) == set(ABLATION_FLAGS) for r in rows)
    f = [r.fusion for r in rows]
    assert (f[0].unknown, f[0].class_assignment) == (False, "detector")
    assert (f[2].unknown, f[2].class_assignment) == (False, "heuristic")
    assert (f[3].unknown, f[3].class_assignment) == (True, "heuristic")
    assert all(x.stuff_area_limit == 5 and x.assignment_threshold == 0.6 for x in f)
    assert [r.needs_features for r in rows] == [False] * 4 + [True] * 3
    assert ablation_rows(head, have_upsnet_c=False)[0].label == "+ panoptic loss"


def _scene_inputs(table_seed: int = 3):
    scene = generate_scene(np.random.default_rng(table_seed), 64)
    target = build_target(scene.panoptic, scene.table)
    n_things = scene.table.num_things
    sem = torch.randn(1, scene.table.num_classes, 64, 64)
    calls = {}

    def mask_fn(boxes, labels):
        calls["mask"] = (boxes.clone(), labels.clone())
        return torch.full((len(boxes), 28, 28), 10.0)  # uniform: the semantic logits decide inside boxes

    def classify_fn(boxes):
        calls["classify"] = boxes.clone()
        return torch.full((len(boxes),), 0.8), torch.zeros(len(boxes), dtype=torch.long) % n_things

    empty = Instances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 28, 28))
    return scene, target, Inputs(sem, empty, target, mask_fn, classify_fn), calls


def test_gt_box_rows_take_boxes_from_gt_and_classes_from_model_or_gt():
    scene, target, inp, calls = _scene_inputs()
    sem, inst = gt_boxes(inp, scene.table)
    assert sem is inp.semantic_logits
    assert torch.equal(inst.boxes, target.boxes) and torch.equal(calls["classify"], target.boxes)
    assert torch.all(inst.scores == 0.8) and torch.all(inst.labels == 0)
    from panoptic.compare.rows import gt_boxes_classes

    _, inst2 = gt_boxes_classes(inp, scene.table)
    assert torch.equal(inst2.labels, target.labels) and torch.all(inst2.scores == 1.0)
    assert torch.equal(calls["mask"][1], target.labels)


def test_gt_semantic_row_gets_stuff_exactly_right():
    """With ground-truth semantic logits, boxes and classes, every stuff segment is exact."""
    scene, target, inp, _ = _scene_inputs(5)
    table = scene.table
    sem, inst = gt_semantic(inp, table)
    assert sem.shape == inp.semantic_logits.shape
    assert torch.equal(sem[0].argmax(0)[target.semantic != 255], target.semantic[target.semantic != 255])
    res = UPSNetFusion(table, stuff_area_limit=0)(sem, [inst])[0]
    pq = PanopticQuality(table)
    pq.update(scene.panoptic, res)
    out = pq.compute()
    assert out["Stuff"]["pq"] == pytest.approx(1.0)  # stuff comes straight from the semantic ground truth
    assert out["All"]["pq"] > 0.5


# ------------------------------------------------------------------------------------------- report
def _fake_results():
    m = {"PQ": 50.0, "SQ": 80.0, "RQ": 62.5, "PQ_th": 40.0, "SQ_th": 75.0, "RQ_th": 53.3, "PQ_st": 60.0,
         "SQ_st": 85.0, "RQ_st": 70.6, "mIoU": 70.0, "AP_box": float("nan"), "AP_mask": 20.0, "ms_per_image": 30.0,
         "network_ms": 28.0, "fusion_ms": 2.0}
    models = {"mrcnn_psp": {**m, "name": "MR-CNN-PSP", "PQ": 48.0, "ms_per_image": 45.0},
              "upsnet": {**m, "name": "UPSNet"}}
    flags = dict.fromkeys(ABLATION_FLAGS, False)
    ablation = [{"row": "+ ICA", **flags, "ica": True, "PQ": 49.0, "SQ": 1.0, "RQ": 1.0, "PQ_th": 1.0, "PQ_st": 1.0},
                {"row": "+ unknown", **flags, "unknown": True, "PQ": 50.0, "SQ": 1.0, "RQ": 1.0, "PQ_th": 1.0,
                 "PQ_st": 1.0},
                {"row": "+ GT semantic", **flags, "PQ": 89.9, "SQ": 1.0, "RQ": 1.0, "PQ_th": 1.0, "PQ_st": 1.0}]
    runtime = [{"name": v["name"], "image_size": [128, 128], "network_ms": v["network_ms"],
                "fusion_ms": v["fusion_ms"], "ms_per_image": v["ms_per_image"]} for v in models.values()]
    return {"models": models, "ablation": ablation, "runtime": runtime}


def test_tables_render_every_row_and_column():
    res = _fake_results()
    md = to_markdown("main", res)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and "| UPSNet | 50.0 | 80.0 |" in md and "PQ^Th" in lines[0]
    assert "| - |" in md  # NaN AP shown as '-'
    rows = list(csv.reader(io.StringIO(to_csv("main", res))))
    assert rows[0][0] == "model" and rows[2][0] == "UPSNet" and rows[2][11] == ""  # NaN -> empty cell
    abl = to_markdown("ablation", res)
    assert "| + ICA |  | x |" in abl and "GT Seg." in abl
    assert "128x128" in to_markdown("runtime", res)
    with pytest.raises(ValueError, match="unknown table"):
        to_markdown("bogus", res)


def test_checks_state_the_claims():
    res = _fake_results()
    claims = [{"claim": "UPSNet beats MR-CNN-PSP (PQ)", "level": 0.95, "holds": True},
              {"claim": "unknown prediction improves PQ", "level": 0.95, "holds": False}]
    c = checks(res["models"], res["ablation"], claims)
    assert c["UPSNet beats MR-CNN-PSP (PQ): 95% interval above 0"] is True
    assert c["unknown prediction improves PQ: 95% interval above 0"] is False  # the claim's verdict, as given
    assert c["UPSNet faster than MR-CNN-PSP"] is True
    assert c["GT-semantic oracle PQ >= 90"] is False
    assert not any("UPSNet-C" in k for k in c)  # not run, not claimed


def test_tables_show_mean_and_std_over_seeds():
    res = _fake_results()
    res["seeds"] = [0, 1, 2]
    for entry in [*res["models"].values(), *res["ablation"]]:
        entry["std"] = {k: 0.25 for k, v in entry.items() if isinstance(v, float)}
    md = to_markdown("main", res)
    assert "| UPSNet | 50.0 ± 0.2 | 80.0 ± 0.2 |" in md and "| - |" in md  # NaN AP stays '-'
    assert "30.0 ± " not in md  # times are means, no spread
    rows = list(csv.reader(io.StringIO(to_csv("main", res))))
    assert rows[0][-1] == "AP_mask_std" and "ms_per_image_std" not in rows[0]
    assert float(rows[2][1]) == 50.0 and float(rows[2][rows[0].index("PQ_std")]) == 0.25
    assert "| + ICA |  | x |  |  |  |  | 49.0 ± 0.2 |" in to_markdown("ablation", res)


def test_figure_stacks_rows():
    table = tiny_table()
    seg = result_from_labels(torch.tensor([[0, 0, 1, 1]] * 4), table, [0, 2])
    img = np.zeros((4, 4, 3), np.uint8)
    fig = comparison_figure([img, img], [seg, seg], {"A": [seg, seg], "B": [seg, seg]}, table, gap=2, min_side=1)
    assert fig.dtype == np.uint8 and fig.shape[1] == 4 * 4 + 3 * 2 and fig.shape[0] > 2 * 4 + 2
    big = comparison_figure([img], [seg], {"A": [seg]}, table, gap=2, min_side=10)  # enlarged 3x (4 -> 12 px)
    assert big.shape[1] == 3 * 12 + 2 * 2
    with pytest.raises(ValueError, match="one ground truth"):
        comparison_figure([img], [seg, seg], {}, table)


# ------------------------------------------------------------------------------------- end to end
def test_compare_end_to_end_and_cache_reuse(tmp_path):
    data = DataConfig(synthetic_n=12, synthetic_size=64, synthetic_val_fraction=0.25, cache_dir=str(tmp_path / "data"))
    cfg = CompareConfig(data=data, iterations=3, batch_size=2, warmup_iters=1, model_kwargs={"fpn_channels": 16},
                        out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "ckpt"), figure_images=2,
                        timing_warmup=1, progress=False, threads=1, seeds=1)
    lines: list[str] = []
    first = run_compare(cfg, log=lines.append)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["models"]) == {"mrcnn_psp", "upsnet_c", "upsnet_cp", "upsnet"}
    for entry in res["models"].values():
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP_box", "AP_mask", "ms_per_image"):
            assert key in entry
        assert entry["ms_per_image"] > 0 and 0 <= entry["PQ"] <= 100
    assert [r["row"] for r in res["ablation"]][-1] == "+ GT semantic" and len(res["ablation"]) == 7
    assert all(r[k] >= 0 for r in res["ablation"] for k in ("changed_px", "unknown_px", "dropped"))
    assert res["ablation"][0]["changed_px"] == 0 and "px changed" in (tmp_path / "out" / "ablation.md").read_text()
    unknown_row = next(r for r in res["ablation"] if r["row"] == "+ unknown")
    assert unknown_row["PQ"] == pytest.approx(res["models"]["upsnet"]["PQ"])  # same network, same head
    assert res["num_images"] == 3 and res["wall_s"] > 0 and res["seeds"] == [0]
    assert not any(t["reused"] for runs in res["training"].values() for t in runs)
    claims = {c["claim"]: c for c in res["claims"]}
    assert len(claims) == 3 and all(c["lo"] <= c["pq_diff"] <= c["hi"] and c["images"] == 3 for c in claims.values())
    assert "## Claims" in (tmp_path / "out" / "report.md").read_text()
    stats = np.load(tmp_path / "out" / "per_image.npz")  # the bootstrap's input gives the tables' PQ back
    for key, entry in [*res["models"].items(), *(("ablation/" + r["row"], r) for r in res["ablation"])]:
        assert stats[key].shape[:2] == (1, 3)
        assert pq_from_stats(stats[key][0].sum(0)) == pytest.approx(entry["PQ"]), key
    for name in ("main.md", "main.csv", "ablation.md", "ablation.csv", "runtime.md", "runtime.csv", "report.md",
                 "figure.png", "per_image.npz"):
        assert (tmp_path / "out" / name).is_file(), name
    assert any(line.startswith("[2/4] training") for line in lines)

    # A rerun with more seeds reuses seed 0's cached checkpoints (same weights, same PQ) and trains seed 1 only.
    again = run_compare(dataclasses.replace(cfg, seeds=2, figure_images=0), log=lambda _: None)
    assert again.results["seeds"] == [0, 1]
    assert all([t["reused"] for t in runs] == [True, False] for runs in again.results["training"].values())
    for k, v in first.results["models"].items():
        w = again.results["models"][k]
        assert w["per_seed_PQ"][0] == v["PQ"] and w["PQ"] == pytest.approx(sum(w["per_seed_PQ"]) / 2)
    assert "| UPSNet | " in to_markdown("main", again.results) and " ± " in to_markdown("main", again.results)


def test_compare_requires_a_held_out_split(tmp_path):
    data = DataConfig(synthetic_n=4, synthetic_size=32, synthetic_val_fraction=0.0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="held-out split"):
        run_compare(CompareConfig(data=data, out_dir=str(tmp_path / "o")), log=lambda _: None)


def test_cli_rejects_unknown_models(capsys):
    from panoptic.cli import main

    assert main(["compare", "--models", "upsnet,nope"]) == 2
    assert "unknown model id" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cli_device_cuda_without_a_gpu_is_one_line(capsys):
    from panoptic.cli import main

    assert main(["compare", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err and "Traceback" not in err


def test_cli_on_user_data_with_a_categories_file(tmp_path, capsys):
    """`--data` + `--categories` on a COCO-panoptic folder (here written by the synthetic writer)."""
    from panoptic.cli import main
    from panoptic.data import write_synthetic_dataset

    paths = write_synthetic_dataset(tmp_path / "data", 8, 48, seed=1, splits={"train": 6, "val": 2})
    cats = json.loads(paths["train"].read_text())["categories"]
    (tmp_path / "cats.json").write_text(json.dumps(cats))
    args = ["compare", "--data", str(tmp_path / "data"), "--categories", str(tmp_path / "cats.json"), "--quick",
            "--models", "upsnet", "--iterations", "2", "--out", str(tmp_path / "out"), "--cache",
            str(tmp_path / "ckpt"), "--threads", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| UPSNet |" in out and "total wall time" in out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["models"]) == ["upsnet"] and res["num_images"] == 2
    assert res["config"]["data"]["categories"] == str(tmp_path / "cats.json")
    # a categories file that lacks a category of the data is refused before any training
    (tmp_path / "bad.json").write_text(json.dumps(cats[:-1]))
    assert main([*args[:4], str(tmp_path / "bad.json"), *args[5:]]) == 2
    assert "categor" in capsys.readouterr().err


def test_jobs_train_in_worker_processes_with_their_share_of_the_threads(tmp_path):
    """--jobs 2: the trainings run at once in two processes with 1 thread each, are cached with that thread
    count (another key than one 2-thread job) and reused by a rerun."""
    from panoptic.engine.checkpoint import load_checkpoint

    with pytest.raises(ConfigError, match="jobs"):
        CompareConfig(jobs=0)
    data = DataConfig(synthetic_n=12, synthetic_size=64, synthetic_val_fraction=0.25, cache_dir=str(tmp_path / "data"))
    cfg = CompareConfig(models=("upsnet_c", "upsnet"), data=data, iterations=3, batch_size=2, warmup_iters=1,
                        model_kwargs={"fpn_channels": 16}, out_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "ckpt"), figure_images=0, timing_warmup=1, progress=False,
                        threads=2, jobs=2, seeds=1)
    assert cfg.training_threads == 1 and cfg.train_config("upsnet", "").threads == 1
    assert dataclasses.replace(cfg, jobs=1).train_config("upsnet", "").threads == 2
    lines: list[str] = []
    first = run_compare(cfg, log=lines.append)
    assert any("2 at once with 1 thread(s) each" in line for line in lines)
    runs = first.results["training"]
    assert set(runs) == {"upsnet", "upsnet_c"} and not any(t["reused"] for r in runs.values() for t in r)
    for path in (tmp_path / "ckpt").glob("*/model_final.pt"):
        assert load_checkpoint(path, "cpu")[2].threads == 1
    again = run_compare(cfg, log=lambda _: None)
    assert all(t["reused"] for r in again.results["training"].values() for t in r)
    assert again.results["models"]["upsnet"]["PQ"] == first.results["models"]["upsnet"]["PQ"]
