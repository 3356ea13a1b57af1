"""The `panoptic` command, the demo end to end, and the README (its commands and its code)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic import CategoryTable, __version__
from panoptic.cli import main
from panoptic.evaluation import PanopticQuality
from panoptic.formats import from_coco

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and __version__ in out and "fusion passes:" in out and "PNG decoder:" in out
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("compare", "demo", "synth", "train", "predict", "evaluate"):
        assert cmd in out


FAMILIES = {"heuristic": "semantic + instances", "upsnet": "semantic + instances", "maskformer": "queries",
            "centre": "centre offsets"}


def test_demo_writes_consistent_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "96", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "side_by_side.png" in printed
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[2:-1]}
    assert list(rows) == list(FAMILIES)  # one table row per strategy, every family
    panel = np.asarray(Image.open(out / "side_by_side.png"))
    assert panel.shape[1] > (2 + len(FAMILIES)) * 96 and panel.ndim == 3  # image, ground truth, one per strategy
    summary = json.loads((out / "summary.json").read_text())

    def read(name):
        meta = json.loads((out / f"{name}_segments.json").read_text())
        table = CategoryTable.from_coco(meta["categories"])
        png = np.asarray(Image.open(out / f"{name}_panoptic.png").convert("RGB"))
        return from_coco(png, meta["segments_info"], table), table  # validates PNG <-> JSON

    gt, table = read("ground_truth")
    gt.validate(table)
    for name, family in FAMILIES.items():
        res, _ = read(name)
        res.validate(table, one_stuff_segment=True)
        s = summary[name]
        assert s["family"] == family and s["segments"] == res.num_segments
        metric = PanopticQuality(table)  # the demo's PQ is that of the files it wrote
        metric.update(gt, res)
        scores = metric.compute()
        for key, row in (("PQ", "All"), ("PQ_th", "Things"), ("PQ_st", "Stuff")):
            assert math.isfinite(s[key]) and s[key] == pytest.approx(100 * scores[row]["pq"], abs=0.006)
        assert float(rows[name][1]) == pytest.approx(s["PQ"], abs=0.051)  # the printed table shows the same
    assert main(["demo", "--out", str(out), "--size", "8"]) == 2


def test_demo_is_deterministic_for_a_seed(tmp_path):
    from panoptic.demo import run_demo

    def pq_and_maps(report):
        return ({n: {k: v for k, v in s.items() if k != "ms"} for n, s in report.summary.items()
                 if isinstance(s, dict)}, {n: r.segment_map for n, r in report.results.items()})

    first, second = (pq_and_maps(run_demo(tmp_path / name, seed=5, size=64)) for name in ("a", "b"))
    assert first[0] == second[0] and set(first[0]) == set(FAMILIES)
    assert all(torch.equal(first[1][n], second[1][n]) for n in FAMILIES)
    other = pq_and_maps(run_demo(tmp_path / "c", seed=6, size=64))
    assert any(not torch.equal(first[1][n], other[1][n]) for n in FAMILIES)  # the seed matters


def test_python_m_panoptic_runs():
    proc = subprocess.run([sys.executable, "-m", "panoptic", "--version"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_two_quickstart_commands_and_ci_runs_them():
    cmds = _quickstart_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    ci = (ROOT / ".ci" / "run").read_text()
    install, run_main = cmds[0].split(" && ")
    assert run_main == "panoptic compare"
    assert install in ci and f"{run_main} --quick" in ci  # CI runs the main job's smoke run
    assert cmds[1] in ci


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
