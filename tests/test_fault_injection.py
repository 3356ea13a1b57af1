"""Nothing lost: a failure at any write of ``predict``, ``train`` or ``compare`` leaves the previous outputs intact,
no temporary file behind, and a one-line error naming the file, the cause and the fix (exit code 2).

Every output goes through :mod:`panoptic.atomic`, whose one low-level write (``_write_all``) the tests patch: the
k-th file a command writes gets half its first block and then ``ENOSPC`` (disk full), for every k of a clean run.
A real file-size limit (``RLIMIT_FSIZE``, no patching) is tested too.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from panoptic import atomic
from panoptic.cli import main
from panoptic.data import synthetic_categories, write_synthetic_dataset
from panoptic.engine import TrainConfig, read_checkpoint, train
from panoptic.engine.checkpoint import build_named_model, save_checkpoint
from panoptic.engine.data import synthetic_benchmark
from panoptic.engine.predict import predict_images
from panoptic.errors import describe_os_error


class DiskFull:
    """Patch :func:`panoptic.atomic._write_all`: count the files written; make file ``fail_at`` (1-based) fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.files: list[str] = []
        self._current: object = None
        real = atomic._write_all

        def write(f, data):
            if f is not self._current:
                self._current = f
                self.files.append(getattr(f, "name", "?"))
            if len(self.files) == self.fail_at:
                real(f, data[: len(data) // 2])  # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(f, data)

        monkeypatch.setattr(atomic, "_write_all", write)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def restore(folder: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def check_one_line(err: str, folder: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(folder) in lines[0] and "No space left on device (free some disk space" in lines[0], lines[0]


# --------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predict_setup(tmp_path_factory):
    """A small untrained model (at most 2 detections per image: the writes are under test, not the network),
    its checkpoint, a folder of 2 images and a folder of 1."""
    tmp = tmp_path_factory.mktemp("predict")
    table = synthetic_categories()
    torch.manual_seed(0)
    model = build_named_model("upsnet_cpu_small", table, {"fpn_channels": 8}).eval()
    model.instance_head.roi_heads.detections_per_img = 2
    ckpt = save_checkpoint(tmp / "m.pt", model, model_name="upsnet_cpu_small", table=table,
                           model_kwargs={"fpn_channels": 8})
    (tmp / "images").mkdir()
    for k in range(2):
        Image.new("RGB", (40, 32), (80 * k, 90, 200 - 50 * k)).save(tmp / "images" / f"im{k}.png")
    (tmp / "one").mkdir()
    shutil.copy(tmp / "images" / "im0.png", tmp / "one")
    return tmp, ckpt, model, table


def test_a_failure_at_any_write_of_predict_keeps_the_previous_outputs(predict_setup, tmp_path, monkeypatch):
    src, _, model, table = predict_setup
    out = tmp_path / "out"
    predict_images(model, table, [src / "one"], out_dir=out, fusion="heuristic")  # the previous outputs
    before = snapshot(out)
    counter = DiskFull(monkeypatch)
    predict_images(model, table, [src / "one"], out_dir=tmp_path / "clean")
    assert len(counter.files) == len(before) == 4  # PNG, segments JSON, overlay, panoptic.json
    for k in range(1, 5):
        restore(out, before)
        DiskFull(monkeypatch, fail_at=k)
        with pytest.raises(OSError) as e:
            predict_images(model, table, [src / "one"], out_dir=out)
        assert e.value.errno == errno.ENOSPC and str(out) in describe_os_error(e.value)
        assert snapshot(out) == before, f"a failure at file {k} changed the previous outputs"
        assert no_temporaries(out)


def test_predict_io_failures_are_one_line_exit_2(predict_setup, tmp_path, monkeypatch, capsys):
    """Through the command line: a full disk (patched) and a real file-size limit (``RLIMIT_FSIZE``)."""
    src, ckpt, _, _ = predict_setup
    out = tmp_path / "out"
    args = ["predict", str(src / "images"), "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*args, "--fusion", "heuristic"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        DiskFull(m, fail_at=7)  # the index, after every PNG
        assert main(args) == 2
    check_one_line(capsys.readouterr().err, out / "panoptic.json")
    assert snapshot(out) == before and no_temporaries(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, hard))  # panoptic.json is larger (Python ignores SIGXFSZ)
    try:
        code = main(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert str(out) in lines[0] and "File too large" in lines[0] and "ulimit -f" in lines[0], lines[0]
    assert snapshot(out) == before and no_temporaries(out)


# ----------------------------------------------------------------------------------------------- train
def _train_config(tmp: Path, out: Path, iterations: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "iterations": iterations, "batch_size": 2, "log_every": 1, "eval_every": 0, "eval_at_end": False,
        "checkpoint_every": 1, "keep_checkpoints": 1, "model_kwargs": {"fpn_channels": 8}, "progress": False,
        "tensorboard": False, "threads": 1, "out_dir": str(out),
        "data": {"synthetic_n": 4, "synthetic_size": 32, "synthetic_val_fraction": 0.25, "cache_dir": str(tmp)},
        "optim": {"lr": 0.01, "warmup_iters": 1, "steps": [9]}})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_checkpoint(path)["model"].items() if isinstance(v, torch.Tensor)}


def _check_run_folder(run: Path, before: dict[str, bytes]) -> None:
    """Every file of a run folder is whole: an old or a complete new version; the log only grew by whole lines."""
    now = snapshot(run)
    for name, data in now.items():
        if name.endswith(".pt"):
            read_checkpoint(run / name)  # loads: not truncated
        elif name == "metrics.jsonl":
            assert data.startswith(before[name]) and data.endswith(b"\n")
            [json.loads(line) for line in data.splitlines()]
        elif name.endswith(".json"):
            json.loads(data)
    assert (run / (run / "last_checkpoint").read_text().strip()).is_file()
    assert no_temporaries(run)


def test_a_failure_at_any_write_of_train_loses_nothing_and_resume_is_still_exact(tmp_path, monkeypatch):
    reference = train(_train_config(tmp_path, tmp_path / "ref", 3))  # uninterrupted
    first = tmp_path / "first"
    train(_train_config(tmp_path, first, 1))
    before = snapshot(first)
    counter = DiskFull(monkeypatch)
    shutil.copytree(first, tmp_path / "count")
    train(_train_config(tmp_path, tmp_path / "count", 3), resume=True)
    names = [Path(f).name.split(".")[1] for f in counter.files]  # ".config.json.<pid>.<id>.tmp" -> "config"
    # config.json; iteration 2: log line, periodic checkpoint, last_checkpoint; iteration 3: log line, final, last
    assert names == ["config", "jsonl", "checkpoint_0000002", "last_checkpoint", "jsonl", "model_final",
                     "last_checkpoint"], counter.files
    for k in range(1, len(names) + 1):
        run = tmp_path / f"run{k}"
        shutil.copytree(first, run)
        DiskFull(monkeypatch, fail_at=k)
        with pytest.raises(OSError) as e:
            train(_train_config(tmp_path, run, 3), resume=True)
        assert e.value.errno == errno.ENOSPC and str(run) in describe_os_error(e.value)
        _check_run_folder(run, before)
        if names[k - 1] not in ("checkpoint_0000002", "model_final"):
            continue  # resuming after the other faults is the same (and costs seconds each)
        monkeypatch.setattr(atomic, "_write_all", lambda f, data: f.write(data))
        resumed = train(_train_config(tmp_path, run, 3), resume=True)  # the run goes on, as if never interrupted
        a, b = _weights(reference.checkpoint), _weights(resumed.checkpoint)
        assert all(torch.equal(a[key], b[key]) for key in a), f"fault at file {k}: weights differ"


def test_a_full_disk_during_a_checkpoint_save_is_one_clear_line(tmp_path, monkeypatch, capsys):
    cfg = _train_config(tmp_path, tmp_path / "run", 1)
    cfg.save(tmp_path / "c.json")
    synthetic_benchmark(cfg.data)  # the data first: the writes under test are the run's
    DiskFull(monkeypatch, fail_at=3)  # config.json, the log line, then the checkpoint
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    check_one_line(err, tmp_path / "run" / "model_final.pt")  # a 1-iteration run's only checkpoint
    assert "enforce fail" not in err and not (tmp_path / "run" / "model_final.pt").exists()


# --------------------------------------------------------------------------------------------- compare
def test_a_failure_at_any_write_of_compare_keeps_the_previous_outputs(tmp_path, monkeypatch, capsys):
    write_synthetic_dataset(tmp_path / "data", 4, 32, seed=1, splits={"train": 3, "val": 1})
    out = tmp_path / "out"
    args = ["compare", "--data", str(tmp_path / "data"), "--quick", "--models", "upsnet", "--iterations", "1",
            "--out", str(out), "--cache", str(tmp_path / "ckpt"), "--threads", "1", "--no-progress"]
    assert main(args) == 0  # trains and writes the previous outputs
    before = snapshot(out)
    counter = DiskFull(monkeypatch)
    assert main([*args, "--eval-images", "1"]) == 0
    n = len(counter.files)
    assert n == len(before) == 10, counter.files  # results.json, 3 x (md, csv), report.md, figure.png, per_image.npz
    for k in range(1, n + 1):
        restore(out, before)
        capsys.readouterr()
        DiskFull(monkeypatch, fail_at=k)
        assert main([*args, "--eval-images", "1"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "No space left on device" in err and len(err.strip().splitlines()) == 1, err
        assert snapshot(out) == before and no_temporaries(out)
