"""The `panoptic` command, the demo end to end, and the README (its commands and its code)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic import CategoryTable, __version__
from panoptic.cli import main
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


def test_demo_writes_consistent_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "96", "--seed", "3"]) == 0
    assert "side_by_side.png" in capsys.readouterr().out
    panel = np.asarray(Image.open(out / "side_by_side.png"))
    assert panel.shape[1] > 4 * 96 and panel.ndim == 3
    summary = json.loads((out / "summary.json").read_text())
    for name in ("ground_truth", "heuristic", "upsnet"):
        meta = json.loads((out / f"{name}_segments.json").read_text())
        table = CategoryTable.from_coco(meta["categories"])
        png = np.asarray(Image.open(out / f"{name}_panoptic.png").convert("RGB"))
        res = from_coco(png, meta["segments_info"], table)  # validates PNG <-> JSON
        res.validate(table, one_stuff_segment=name != "ground_truth")
        if name != "ground_truth":
            assert summary[name]["segments"] == res.num_segments
    assert main(["demo", "--out", str(out), "--size", "8"]) == 2


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
