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
