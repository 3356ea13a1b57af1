"""Engine: typed configs and CLI overrides, the SGD schedule, the resumable sampler, training (loss goes down),
bit-exact resumption, MR-CNN-PSP's two optimizers, metrics files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from panoptic.engine import (
    ConfigError,
    OptimConfig,
    TrainConfig,
    read_checkpoint,
    train,
)
from panoptic.engine._optim import WarmupStepSchedule, build_optimizer, build_scheduler
from panoptic.engine.cli import build_config, main
from panoptic.engine.config import apply_overrides
from panoptic.engine.data import IterationBatchSampler

TINY_MODEL = {"fpn_channels": 16}


def tiny_config(tmp_path, cache, **overrides) -> TrainConfig:
    """A few-second run: 64 px synthetic images, FPN 16, batch 2, no evaluation unless asked."""
    base = {"iterations": 6, "batch_size": 2, "log_every": 3, "eval_every": 0, "eval_at_end": False,
            "checkpoint_every": 0, "keep_checkpoints": 0, "model_kwargs": TINY_MODEL, "progress": False,
            "threads": 1, "out_dir": str(tmp_path / "run"),
            "data": {"synthetic_n": 12, "synthetic_size": 64, "cache_dir": str(cache)},
            "optim": {"lr": 0.01, "warmup_iters": 4, "steps": [5]}}
    cfg = TrainConfig.from_dict(base)
    return apply_overrides(cfg, overrides) if overrides else cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


def _flat_state(path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in read_checkpoint(path)["model"].items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------ config
def test_config_round_trip_overrides_and_errors(tmp_path):
    cfg = TrainConfig.from_dict({"iterations": 10, "optim": {"lr": 0.5, "steps": [4, 8]}, "data": {"short_side": 96}})
    assert cfg.optim.steps == (4, 8) and cfg.data.short_side == (96,) and cfg.optim.momentum == 0.9
    assert TrainConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    over = apply_overrides(cfg, {"optim.lr": 0.1, "model_kwargs.fpn_channels": 8, "data.root": "x"})
    assert (over.optim.lr, over.model_kwargs, over.data.root) == (0.1, {"fpn_channels": 8}, "x")
    with pytest.raises(ConfigError, match=r"unknown config key.*optim\.lrr"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="iterations must be an int"):
        TrainConfig.from_dict({"iterations": "10"})
    with pytest.raises(ConfigError, match="batch_size must be an int >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"optim\.steps must be increasing"):
        OptimConfig(steps=(5, 2))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config"):
        TrainConfig.load(tmp_path / "bad.json")


def test_cli_flags_override_the_config_file(tmp_path):
    import argparse

    from panoptic.engine.cli import register

    TrainConfig.from_dict({"iterations": 50, "batch_size": 3, "optim": {"lr": 0.3}}).save(tmp_path / "c.json")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(tmp_path / "c.json"), "--lr", "0.05", "--steps", "30", "40",
                              "--model-arg", "fpn_channels=8", "--no-amp", "--clip-grad", "0", "--data", "d"])
    cfg = build_config(args)
    assert (cfg.iterations, cfg.batch_size, cfg.optim.lr, cfg.optim.steps) == (50, 3, 0.05, (30, 40))
    assert cfg.model_kwargs == {"fpn_channels": 8} and not cfg.amp and cfg.optim.clip_grad_norm is None
    assert cfg.data.root == "d"


def test_print_config_and_bad_flag(capsys, tmp_path):
    assert main(["train", "--print-config", "--iterations", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"] == 7
    assert main(["train", "--print-config", "--model-arg", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- schedule
def test_warmup_step_schedule_and_param_groups():
    cfg = OptimConfig(lr=0.1, warmup_iters=10, warmup_factor=0.1, steps=(20, 30), gamma=0.1, weight_decay=1e-4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    opt = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["weight"]["lr"] == pytest.approx(0.1) and groups["weight"]["weight_decay"] == 1e-4
    assert groups["bias"]["lr"] == pytest.approx(0.2) and groups["bias"]["weight_decay"] == 0.0
    assert len(groups["norm"]["params"]) == 2 and groups["norm"]["weight_decay"] == 0.0
    assert len(groups["bias"]["params"]) == 2  # the two conv biases, not BN's shift
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(35):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)  # warmup starts at lr / 10
    assert lrs[5] == pytest.approx(0.1 * (0.1 * 0.5 + 0.5))
    assert lrs[10] == lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)
    assert WarmupStepSchedule(0, 0.1, (), 0.1)(0) == 1.0


def test_sampler_is_a_pure_function_of_the_iteration_and_shards_ranks():
    full = list(IterationBatchSampler(10, 3, seed=4, start=0, end=8))
    assert list(IterationBatchSampler(10, 3, seed=4, start=5, end=8)) == full[5:]
    epoch0 = [i for b in full for e, i in b if e == 0]
    assert sorted(epoch0) == list(range(10))
    r0 = [i for b in IterationBatchSampler(7, 2, 1, rank=0, world_size=2, end=2) for _, i in b]
    r1 = [i for b in IterationBatchSampler(7, 2, 1, rank=1, world_size=2, end=2) for _, i in b]
    assert set(r0[:4]) | set(r1[:4]) == set(range(7))  # epoch 0 padded to 8 items, split across ranks


# -------------------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_writes_metrics(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, iterations=30, log_every=5, eval_at_end=True)
    result = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r["type"] == "train"]
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses
    assert set(lines[0]["losses"]) >= {"rpn_objectness", "mask", "semantic", "panoptic"}
    assert lines[0]["eta_s"] > 0 and lines[0]["images_per_sec"] > 0 and "model" in lines[0]["lr"]
    ev = [r for r in lines if r["type"] == "eval"]
    assert len(ev) == 1 and ev[0]["iteration"] == 30
    assert {"pq", "sq", "rq", "pq_th", "pq_st", "miou", "per_class"} <= set(ev[0])
    assert ev[0]["num_images"] == 2 == result.metrics["num_images"]
    assert result.iterations == 30 and result.checkpoint.name == "model_final.pt"
    assert TrainConfig.load(tmp_path / "run" / "config.json") == cfg
    meta = read_checkpoint(result.checkpoint)["meta"]
    assert meta.iteration == 30 and meta.config == cfg.to_dict() and meta.metrics["pq"] == result.metrics["pq"]


@pytest.mark.parametrize("model", ["upsnet_cpu_small", "mrcnn_psp_cpu_small"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, cache, model):
    full = train(tiny_config(tmp_path / "a", cache, model=model, checkpoint_every=3, eval_every=3))
    ckpt = tmp_path / "a" / "run" / "checkpoint_0000003.pt"
    resumed = train(tiny_config(tmp_path / "b", cache, model=model), resume=ckpt)
    a, b = _flat_state(full.checkpoint), _flat_state(resumed.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert full.losses == resumed.losses
    parts = {"upsnet_cpu_small": {"model"}, "mrcnn_psp_cpu_small": {"detector", "semantic"}}[model]
    assert set(read_checkpoint(ckpt)["optimizers"]) == parts  # MR-CNN-PSP: one optimizer per part


def test_resume_true_continues_the_latest_checkpoint_of_the_run(tmp_path, cache):
    cfg = tiny_config(tmp_path, cache, iterations=2, checkpoint_every=1, keep_checkpoints=1)
    train(cfg)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_0000001.pt"]
    assert (run / "last_checkpoint").read_text().strip() == "model_final.pt"
    more = train(apply_overrides(cfg, {"iterations": 3}), resume=True)
    assert more.iterations == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [2, 3]
