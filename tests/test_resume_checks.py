"""``--resume`` continues the same run or says why not: every config difference is listed with the flag that
accepts it, an ``--iterations`` below the checkpoint's is an error, a corrupt table in the checkpoint is a
clear error; with the same config resuming is bit-exact (tests/test_engine.py)."""

from __future__ import annotations

import json

import pytest
import torch

from panoptic.cli import main
from panoptic.engine import TrainConfig, read_checkpoint, train
from panoptic.engine.checkpoint import CheckpointError
from panoptic.engine.config import apply_overrides
from panoptic.engine.resume import ALLOW_FLAG, check_resume, config_differences


def _config(tmp_path, cache, **over) -> TrainConfig:
    base = {"iterations": 2, "batch_size": 2, "log_every": 1, "eval_every": 0, "eval_at_end": False,
            "checkpoint_every": 1, "keep_checkpoints": 0, "model_kwargs": {"fpn_channels": 8}, "progress": False,
            "tensorboard": False, "threads": 1, "out_dir": str(tmp_path / "run"),
            "data": {"synthetic_n": 8, "synthetic_size": 64, "cache_dir": str(cache)},
            "optim": {"lr": 0.01, "warmup_iters": 1, "steps": [5]}}
    cfg = TrainConfig.from_dict(base)
    return apply_overrides(cfg, over) if over else cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-iteration run with checkpoint_0000001.pt and model_final.pt."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = _config(tmp, tmp / "cache")
    train(cfg)
    return tmp, cfg


def test_config_differences_ignore_logging_fields_and_list_the_rest():
    a = {"seed": 0, "batch_size": 2, "optim": {"lr": 0.02, "steps": [5]}, "out_dir": "a", "log_every": 1,
         "data": {"num_workers": 0, "short_side": None}, "model_kwargs": {"fpn_channels": 8}, "threads": None}
    b = {"seed": 0, "batch_size": 4, "optim": {"lr": 0.01, "steps": [5]}, "out_dir": "b", "log_every": 9,
         "data": {"num_workers": 2, "short_side": [96]}, "model_kwargs": {"fpn_channels": 16}, "threads": 1}
    assert config_differences(a, b) == [("batch_size", 2, 4), ("data.short_side", None, [96]),
                                        ("model_kwargs", {"fpn_channels": 8}, {"fpn_channels": 16}),
                                        ("optim.lr", 0.02, 0.01)]
    assert config_differences(a, a) == []


def test_check_resume_names_each_difference_and_the_flag():
    cfg = {"iterations": 10, "seed": 1, "optim": {"lr": 0.01}}
    kw = {"checkpoint_iteration": 5, "saved_threads": 1, "threads": 2, "saved_world_size": 1, "world_size": 1}
    with pytest.raises(CheckpointError) as e:
        check_resume("c.pt", {"iterations": 5, "seed": 0, "optim": {"lr": 0.01}}, cfg, **kw)
    msg = str(e.value)
    assert "seed: 0 in the checkpoint, 1 now" in msg
    assert "threads (torch CPU threads): 1 in the checkpoint, 2 now" in msg
    assert ALLOW_FLAG in msg and "optim.lr" not in msg and "iterations" not in msg.split(":")[0]
    diffs = check_resume("c.pt", {"iterations": 5, "seed": 0, "optim": {"lr": 0.01}}, cfg, allow_config_change=True,
                         **kw)
    assert len(diffs) == 2
    with pytest.raises(CheckpointError, match=r"already completed 5 iterations.*pass --iterations 5 or more"):
        check_resume("c.pt", None, {"iterations": 4}, **{**kw, "threads": 1}, allow_config_change=True)
    assert check_resume("c.pt", None, {"iterations": 5}, **{**kw, "threads": 1}) == []


@pytest.mark.parametrize("change", [{"optim.lr": 0.02}, {"seed": 3}, {"batch_size": 1}, {"threads": 2},
                                    {"model_kwargs": {"fpn_channels": 16}}])
def test_resume_refuses_a_changed_config(run, change):
    tmp, cfg = run
    ckpt = tmp / "run" / "checkpoint_0000001.pt"
    changed = apply_overrides(cfg, {**change, "out_dir": str(tmp / "other"), "iterations": 3})
    key = next(iter(change))
    with pytest.raises(CheckpointError, match=rf"{key}.*{ALLOW_FLAG}"):
        train(changed, resume=ckpt)
    assert not (tmp / "other" / "model_final.pt").exists()


def test_resume_with_allow_config_change_trains_on(run):
    tmp, cfg = run
    ckpt = tmp / "run" / "checkpoint_0000001.pt"
    out = tmp / "allowed"
    changed = apply_overrides(cfg, {"optim.lr": 0.02, "out_dir": str(out), "iterations": 2})
    result = train(changed, resume=ckpt, allow_config_change=True)
    assert result.iterations == 2 and read_checkpoint(result.checkpoint)["meta"].config["optim"]["lr"] == 0.02


def test_cli_resume_errors_are_one_line_exit_2(run, capsys):
    tmp, cfg = run
    cfg.save(tmp / "cfg.json")
    base = ["train", "--config", str(tmp / "cfg.json"), "--out", str(tmp / "run")]
    assert main([*base, "--iterations", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already completed 2 iterations" in err and "--iterations 2 or more" in err
    assert main([*base, "--iterations", "3", "--lr", "0.5", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.lr: 0.01 in the checkpoint, 0.5 now" in err and ALLOW_FLAG in err


def test_resume_from_a_checkpoint_with_an_invalid_category_table(run, tmp_path):
    tmp, cfg = run
    obj = torch.load(tmp / "run" / "checkpoint_0000001.pt", weights_only=True)
    meta = json.loads(obj["meta"])
    meta["categories"][1]["id"] = meta["categories"][0]["id"]  # duplicate ids
    obj["meta"] = json.dumps(meta)
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: the checkpoint's category table is invalid .*duplicate"):
        train(apply_overrides(cfg, {"out_dir": str(tmp_path / "r")}), resume=bad)
