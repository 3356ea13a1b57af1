"""Smoke test of benchmarks/model_speed.py: its --quick mode runs end to end and writes the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_speed.py"


def test_model_speed_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "model_speed.json"
    # --quick, shrunk further (a tiny image, one timed training iteration) to keep the test well under a minute.
    cmd = [sys.executable, str(SCRIPT), "--quick", "--sizes", "64x128", "--train-iters", "1", "--threads", "1",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    row = data["64x128"]
    for model in ("upsnet", "mrcnn_psp"):
        assert 0 < row[f"{model}_fusion_ms"] < row[f"{model}_ms"]
        det = row[f"{model}_detections"]
        assert det["fused"] == min(det["raw"], 100)
    assert data["train_img_per_s"] > 0
    assert data["target_2x_met"] is None  # 1024x2048 was not run
    assert "| 64x128 |" in proc.stdout


def test_pq_speed_quick_smoke(tmp_path: Path) -> None:
    out = tmp_path / "pq_speed.json"
    script = SCRIPT.parent / "pq_speed.py"
    cmd = [sys.executable, str(script), "--quick", "--n", "2", "--size", "64x128", "--workers", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("ours_files_s", "variants_s", "panopticapi_s", "hotcoco_s"):
        assert key in data
    assert data["ours_files_s"] > 0 and data["variants_s"] > 0
    assert data["max_abs_diff"] < 1e-12  # against panopticapi, or hotcoco, or our own files run
    for name in ("panopticapi", "hotcoco"):  # timed when installed, else skipped with a message
        assert data[f"{name}_s"] > 0 or f"{name} is not installed" in proc.stderr


def test_fusion_speed_batched_table_smoke(tmp_path: Path) -> None:
    """The table `--device cuda` prints on a GPU, run on the CPU (`--batch`): identical results, per-image times."""
    out = tmp_path / "device.json"
    script = SCRIPT.parent / "fusion_speed.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--batch", "2", "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["batch"] == 2 and data["target_met"] is None
    row = data["rows"]["20"]
    assert row["loop_ms_per_image"] > 0 and row["batched_ms_per_image"] > 0 and row["graph_ms_per_image"] > 0
    assert 0 < row["kept"] <= 20
    assert "| 20 (" in proc.stdout
    assert data["machine"]["repeats"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_fusion_speed_cuda_without_a_gpu_says_so() -> None:
    script = SCRIPT.parent / "fusion_speed.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cuda"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device on this machine" in proc.stderr and "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_training_precision_smoke(tmp_path: Path) -> None:
    """benchmarks/training_precision.py times float32 and bfloat16 steps of a compare network and writes its JSON."""
    out = tmp_path / "precision.json"
    script = SCRIPT.parent / "training_precision.py"
    cmd = [sys.executable, str(script), "--steps", "1", "--networks", "upsnet_c", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    from panoptic.engine._precision import cpu_bf16_native

    assert data["cpu_bf16_native"] == cpu_bf16_native()
    row = data["networks"]["upsnet_c"]
    assert row["float32_s"] > 0 and row["bfloat16_s"] > 0
    assert row["ratio"] == pytest.approx(row["bfloat16_s"] / row["float32_s"])
    assert "| upsnet_c |" in proc.stdout
    bad = subprocess.run([sys.executable, str(script), "--networks", "upsnet,maskformer"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert "--networks takes names from upsnet,upsnet_c,mrcnn_psp (got maskformer)" in bad.stderr


def _fusion_speed_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fusion_speed_intervals", SCRIPT.parent / "fusion_speed.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_fusion_speed_busy_machine_verdict_uses_an_interval_of_the_paired_median() -> None:
    """The --load verdict: order-statistic interval of the median (hand-computed), and met / missed / undecided."""
    import math
    import random

    bench = _fusion_speed_module()
    assert bench.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (-math.inf, math.inf)  # no 95% interval below 6
    assert bench.median_interval([3.0, 1.0, 6.0, 2.0, 5.0, 4.0]) == (1.0, 6.0)  # P(all 6 on one side) = 1/32
    assert bench.median_interval([float(v) for v in range(1, 21)]) == (6.0, 15.0)  # the textbook pair for n = 20
    rng, hits = random.Random(0), 0
    for _ in range(2000):  # coverage on a skewed distribution (median log 2)
        lo, hi = bench.median_interval([rng.expovariate(1.0) for _ in range(25)])
        hits += lo <= math.log(2) <= hi
    assert 0.94 <= hits / 2000 <= 0.995
    assert bench.interval_verdict([0.92, 1.10]) == "met"
    assert bench.interval_verdict([1.26, 1.40]) == "missed"
    assert bench.interval_verdict([0.90, 1.30]) == "undecided"
    assert bench.interval_verdict([None, None]) == "undecided"  # too few repeats for an interval
    assert bench.interval_verdict([10.5, 14.0], 10.0, at_least=True) == "met"  # a lower bound: panopticapi / heuristic
    assert bench.interval_verdict([7.0, 9.9], 10.0, at_least=True) == "missed"
    assert bench.interval_verdict([9.0, 12.0], 10.0, at_least=True) == "undecided"


def test_fusion_speed_quiet_targets_are_judged_from_the_paired_intervals(capsys: pytest.CaptureFixture[str]) -> None:
    """Each quiet-machine target gets a verdict per instance count from its paired ratios' interval."""
    bench = _fusion_speed_module()
    ratios = [7.0 + 0.01 * k for k in range(41)]  # median 7.2, interval well below 8
    cell = {**bench._paired_ratio("upsnet_floor", ratios), **bench._paired_ratio("panopticapi_heuristic", [])}
    assert cell["upsnet_floor_paired"] == 7.2 and cell["upsnet_floor_paired_ci"][1] < 8
    wide = bench._paired_ratio("upsnet_floor", [6.0 + 0.1 * k for k in range(41)])  # median 8.0: straddles 8
    pa = bench._paired_ratio("panopticapi_heuristic", [9.0 + 0.2 * k for k in range(41)])  # all >= 9, median 13
    res = {"20": cell, "100": {**wide, **pa}, "machine": {"backend": "torch"}}
    targets = bench.quiet_verdicts(res, bench.FLOOR_TARGET["torch"])
    assert targets["upsnet_floor"]["verdicts"] == {"20": "met", "100": "undecided"}
    assert targets["panopticapi_heuristic"]["verdicts"] == {"100": "met"}  # absent where panopticapi did not run
    assert bench.quiet_verdicts(res, bench.FLOOR_TARGET["c"])["upsnet_floor"]["verdicts"] == {"20": "missed",
                                                                                           "100": "missed"}
    assert "panopticapi_heuristic" not in bench.quiet_verdicts(res, 8.0, heuristic=False)  # torch passes: no target
    bench.print_quiet_verdicts(targets)
    out = capsys.readouterr().out
    assert "upsnet <= 8x the floor" in out and "met at 20, undecided at 100 instances" in out
    assert "panopticapi >= 10x the heuristic" in out


def test_fusion_speed_flags_a_floor_slowed_by_memory_traffic() -> None:
    """The floor's read speed is printed per count; a median well below the fastest repetition is flagged."""
    bench = _fusion_speed_module()
    quiet = {str(n): {"floor_gb_s": 17.5, "floor_gb_s_best": 19.0} for n in bench.COUNTS}
    line = bench.floor_speed_line(quiet)
    assert "17.5 (fastest 19.0)" in line and "flattered" not in line and not bench.floor_contended(quiet)
    busy = {**quiet, str(bench.COUNTS[-1]): {"floor_gb_s": 7.4, "floor_gb_s_best": 16.0}}
    assert "ratios above are flattered" in bench.floor_speed_line(busy) and bench.floor_contended(busy)
    targets = {"upsnet_floor": {"limit": 8.0, "at_least": False, "verdicts": {"20": "met"}}, "floor_contended": True}
    bench.print_quiet_verdicts(targets)  # the flag beside the targets is not a target


def test_fusion_speed_busy_processes_report_a_load_that_ended_early(capsys: pytest.CaptureFixture[str]) -> None:
    """A busy process stops when its time is up or its parent is gone; the phase it left is flagged, not judged."""
    import time

    bench = _fusion_speed_module()
    with bench.busy_processes(1, seconds=60.0) as running:
        assert running()
    with bench.busy_processes(1, seconds=0.1) as running:
        deadline = time.monotonic() + 30  # a slow machine may take a while to start Python
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running()
    t = time.monotonic()  # a spin loop whose parent is another process ends at once
    subprocess.run([sys.executable, "-c", bench._SPIN.format(parent=-1, seconds=60.0)], check=True, timeout=30)
    assert time.monotonic() - t < 20
    cell = {"upsnet20_paired_ci": [0.9, 1.1], "heuristic20_paired_ci": [0.9, 1.1]}
    bench.print_load_verdicts({"64x128": {"quiet": dict(cell), "load": {**cell, "load_held": False}}})
    out = capsys.readouterr().out
    assert "quiet: default <= 1.25x one thread" in out and "met in 2, missed in 0, undecided in 0 of 2" in out
    assert "load: default" in out and "met in 0, missed in 0, undecided in 0, load lost in 2 of 2 cells" in out


def test_fusion_speed_refuses_bad_sizes_with_a_usage_error() -> None:
    """--sizes takes comma-separated HxW of at least 32x32; anything else is a usage error that names the form."""
    script = SCRIPT.parent / "fusion_speed.py"
    for value, message in (("512by1024", "bad size '512by1024'; use HxW, e.g. 512x1024"),
                           ("64x128,16x16", "size '16x16' is too small; use at least 32x32")):
        bad = subprocess.run([sys.executable, str(script), "--threads-only", "--sizes", value], capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2
        assert message in bad.stderr and "Traceback" not in bad.stderr
