"""The command line as a user meets it: one-line errors, Ctrl-C and resume, progress bars, thread defaults, synth
seeds, labelled overlays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic import cli, threads
from panoptic.categories import CategoryTable
from panoptic.data.synthetic import synthetic_categories
from panoptic.engine.checkpoint import CheckpointError
from panoptic.engine.runlog import ProgressBar, progress_enabled
from panoptic.engine.trainer import FINAL_NAME, LAST_FILE, TrainingInterrupted, checkpoint_of
from panoptic.errors import Interrupted, run_command
from panoptic.structures import PanopticResult
from panoptic.visualize import annotate, legend

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PANOPTIC_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    return env


# ------------------------------------------------------------------------------------------ one-line errors
def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"panoptic {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_train_on_missing_or_wrong_data_folder_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--data", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "r")],
                    "does not exist", "--data")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8 not really")
    _one_line_error(capsys, ["train", "--data", str(photos), "--out", str(tmp_path / "r")],
                    "no COCO-panoptic data found", "panoptic synth")


def test_bad_flag_values_are_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--model-arg", "oops", "--print-config"], "KEY=VALUE")
    _one_line_error(capsys, ["compare", "--models", "nope", "--out", str(tmp_path)], "unknown model id")
    _one_line_error(capsys, ["synth", str(tmp_path / "s"), "--n", "0"], "--n must be >= 1")
    _one_line_error(capsys, ["demo", "--size", "8", "--out", str(tmp_path / "d")], "--size")


def test_standalone_entry_points_behave_like_panoptic(tmp_path, capsys):
    from panoptic.data.cli import main as synth_main
    from panoptic.engine.cli import main as engine_main

    assert synth_main(["synth", str(tmp_path / "s"), "--size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "panoptic synth: error: --size must be >= 16, got 8."
    assert engine_main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("panoptic train: error: ") and len(err.splitlines()) == 1


def test_predict_checkpoint_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_0000010.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"checkpoint_0000010\.pt"):
        checkpoint_of(run)
    (run / LAST_FILE).write_text("checkpoint_0000010.pt\n")
    assert checkpoint_of(run) == run / "checkpoint_0000010.pt"  # an unfinished run: its latest checkpoint
    (run / FINAL_NAME).write_bytes(b"x")
    assert checkpoint_of(run) == run / FINAL_NAME  # a finished run: its final one
    assert checkpoint_of(run / FINAL_NAME) == run / FINAL_NAME
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_of(tmp_path / "missing.pt")
    img = tmp_path / "img.png"
    img.write_bytes(b"")
    _one_line_error(capsys, ["predict", str(img), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")],
                    "run folder")


def test_fusion_note_for_models_without_the_panoptic_loss():
    from panoptic.engine.predict import fusion_note
    from panoptic.models import build_model

    table = synthetic_categories()
    psp = build_model("mrcnn_psp_cpu_small", table)
    assert "MR-CNN-PSP" in fusion_note("upsnet", psp) and "--fusion heuristic" in fusion_note("upsnet", psp)
    assert fusion_note("heuristic", psp) is None and fusion_note("model", psp) is None
    assert fusion_note("upsnet", build_model("upsnet_c_cpu_small", table)) is not None
    assert fusion_note("upsnet", build_model("upsnet_cpu_small", table)) is None


# -------------------------------------------------------------------------------------------- interrupts
def test_run_command_turns_ctrl_c_into_one_line_and_130(capsys):
    def stop() -> int:
        raise KeyboardInterrupt

    assert run_command("evaluate", stop) == 130
    assert capsys.readouterr().err.strip() == "panoptic evaluate: interrupted"

    def stop_saved() -> int:
        raise Interrupted("stopped at iteration 3 of 9; saved x.pt")

    assert run_command("train", stop_saved) == 130
    assert capsys.readouterr().err.strip() == "panoptic train: stopped at iteration 3 of 9; saved x.pt"


def test_compare_interrupted_in_training_says_how_to_resume(monkeypatch, tmp_path, capsys):
    from panoptic.compare import runner

    def interrupted(config, log=print):
        raise TrainingInterrupted(tmp_path / "c.pt", 7, 30, tmp_path)

    monkeypatch.setattr(runner, "run_compare", interrupted)
    assert cli.main(["compare", "--quick", "--out", str(tmp_path / "o"), "--threads", "1"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"panoptic compare: stopped at iteration 7 of 30; saved {tmp_path / 'c.pt'}; run the same "
                   "`panoptic compare` command again to resume it (models already trained stay cached)")


def _wait_for(proc: subprocess.Popen, text: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    proc.kill()
    raise AssertionError(f"never printed {text!r}; stdout:\n{seen}")


def test_ctrl_c_in_train_saves_a_checkpoint_and_resume_continues(tmp_path, monkeypatch, capsys):
    """SIGINT mid-run: exit 130, one line naming the checkpoint and the resume command, no traceback; that
    command continues from the saved iteration and says so."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "panoptic", "train", "--out", str(out), "--iterations", "12", "--batch-size", "1",
            "--synthetic-n", "6", "--synthetic-size", "48", "--model-arg", "fpn_channels=8", "--eval-every", "0",
            "--checkpoint-every", "0", "--log-every", "1", "--no-progress", "--no-tensorboard", "--threads", "1",
            "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    _wait_for(proc, "iter 2/12", 120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("panoptic train: stopped at iteration "), err
    stopped_at = int(last.split("stopped at iteration ")[1].split()[0])
    assert 2 <= stopped_at < 12
    ckpt = out / f"checkpoint_{stopped_at:07d}.pt"
    assert ckpt.is_file() and (out / LAST_FILE).read_text().strip() == ckpt.name
    assert not (out / FINAL_NAME).exists()
    assert not list(out.glob("*.tmp"))
    resume = last.split("resume with: ")[1].split()
    assert resume[:2] == ["panoptic", "train"] and "--resume" in resume
    # The printed command, run in this process (a second interpreter start costs more than the training).
    monkeypatch.setenv("PANOPTIC_CACHE", str(tmp_path / "cache"))
    assert cli.main(resume[1:]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {ckpt} at iteration {stopped_at}" in printed
    assert "trained 12 iterations" in printed and (out / FINAL_NAME).is_file()


# ------------------------------------------------------------------------------------------ progress bars
def test_progress_bars_only_on_a_terminal_unless_asked(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert progress_enabled(None) is False and progress_enabled(True) is True
    assert not ProgressBar(5).active
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_enabled(None) is True and progress_enabled(False) is False
    bar = ProgressBar(5)
    assert bar.active
    bar.close()
    assert not ProgressBar(5, bar=False).active


def test_bar_shows_the_step_loss_before_the_first_logging_window():
    """The bar's loss is this step's total until the first ``log_every`` window closes (it used to show nan)."""
    from panoptic.engine.trainer import Trainer

    bar = ProgressBar(5, bar=True)
    try:
        assert Trainer._step_total({"a": torch.tensor(1.5), "b": torch.tensor(2.0)}, bar) == 3.5
    finally:
        bar.close()
    assert np.isnan(Trainer._step_total({"a": torch.tensor(1.5)}, ProgressBar(5, bar=False)))  # no bar: no sync


def test_progress_flags_parse_to_three_states():
    parser = cli.build_parser()
    for command in (["evaluate", "--gt-json", "g", "--pred-json", "p"], ["train"], ["compare"]):
        assert parser.parse_args(command).progress is None
        assert parser.parse_args([*command, "--progress"]).progress is True
        assert parser.parse_args([*command, "--no-progress"]).progress is False


# ----------------------------------------------------------------------------------------- thread defaults
def test_every_command_has_threads():
    parser = cli.build_parser()
    for command in (["demo"], ["synth", "out"], ["train"], ["predict", "x", "--checkpoint", "c", "--out", "o"],
                    ["evaluate", "--gt-json", "g", "--pred-json", "p"], ["compare"]):
        assert parser.parse_args(command).threads is None
        assert parser.parse_args([*command, "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--threads", "0"])


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 2.0, 1), (2, 7.5, 1),
                                                   (8, 2.0, 6), (8, 2.6, 5), (1, 0.0, 1)])
def test_default_threads_are_the_free_cores(monkeypatch, cores, busy, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=threads.SAMPLE_S: busy)
    assert threads.default_threads() == expected


def test_default_threads_follow_omp_num_threads_and_restore(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_threads() == 1
    before = torch.get_num_threads()
    with threads.applied_threads(None) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_busy_cores_is_a_share_of_the_cores():
    busy = threads.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= max(threads.available_cores(), os.cpu_count() or 1) + 1e-6


# ------------------------------------------------------------------------------------------------ synth seed
def test_synth_default_seed_is_not_the_benchmarks(tmp_path, capsys):
    from panoptic.data.cli import BENCHMARK_SEED, DEFAULT_SEED
    from panoptic.engine.config import DataConfig

    assert BENCHMARK_SEED == DataConfig().synthetic_seed and DEFAULT_SEED != BENCHMARK_SEED
    assert cli.build_parser().parse_args(["synth", "out"]).seed == DEFAULT_SEED
    assert cli.main(["synth", str(tmp_path / "a"), "--n", "1", "--size", "16", "--threads", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["synth", str(tmp_path / "b"), "--n", "1", "--size", "16", "--seed", str(BENCHMARK_SEED)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "training data" in err


# ------------------------------------------------------------------------------------------------- pictures
def _two_segment_result() -> tuple[PanopticResult, CategoryTable]:
    """8x8: stuff 'sky' everywhere but a 4x4 'disc' instance at rows/cols 2..5, and one unknown pixel."""
    table = synthetic_categories()
    sm = torch.ones(8, 8, dtype=torch.int32)
    sm[2:6, 2:6] = 2
    sm[0, 0] = 0
    unknown = torch.zeros(8, 8, dtype=torch.bool)
    unknown[0, 0] = True
    disc = table.names.index("disc")
    res = PanopticResult(segment_map=sm, unknown_mask=unknown, category=torch.tensor([0, disc]),
                         isthing=torch.tensor([False, True]), score=torch.tensor([float("nan"), 0.9]),
                         area=torch.tensor([47, 16]), source=torch.tensor([-1, 0]),
                         iscrowd=torch.tensor([False, False]))
    return res, table


def test_annotate_outlines_things_in_their_colour_and_adds_a_legend():
    res, table = _two_segment_result()
    grey = np.full((8, 8, 3), 128, np.uint8)
    bare = annotate(grey, res, table, labels=False, show_legend=False)
    k = bare.shape[0] // 8
    assert bare.shape == (8 * k, 8 * k, 3) and k > 1
    disc_color = np.array(table.categories[table.names.index("disc")].color, np.uint8)
    # The instance's border pixels (in the enlarged picture) take its colour, its interior and the stuff do not.
    assert (bare[2 * k, 3 * k] == disc_color).all() and (bare[5 * k + k - 1, 3 * k] == disc_color).all()
    assert (bare[4 * k, 4 * k] == 128).all() and (bare[7 * k, 7 * k] == 128).all()
    full = annotate(grey, res, table)
    assert full.shape[1] == 8 * k and full.shape[0] > 8 * k  # legend strip below
    strip = legend(table, [0, table.names.index("disc")], full.shape[1], unknown=True)
    assert (full[8 * k:] == strip).all()
    assert (full[: 8 * k] != bare).any()  # name tags were drawn


def test_quickstart_and_demo_pictures_have_a_legend(tmp_path):
    from PIL import Image

    from panoptic.demo import run_demo

    report = run_demo(tmp_path, seed=0, size=64)
    w, h = Image.open(report.out_dir / "side_by_side.png").size
    assert h > 64 + 18 and w >= 4 * 64
