"""bfloat16 autocast training on the CPU: the switch (TrainConfig.cpu_amp, --cpu-amp), what the step runs in, that
it trains, resumes exactly, and how `panoptic compare` picks it (on where the CPU computes bfloat16 in hardware),
keys its cache and records it."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from test_engine import _flat_state, tiny_config
from torch import nn

from panoptic.compare.config import CompareConfig
from panoptic.compare.fingerprint import FileHashes
from panoptic.compare.training import cache_key
from panoptic.engine import read_checkpoint, train
from panoptic.engine._precision import autocast_dtype, cpu_bf16_native
from panoptic.engine.cli import build_config, register
from panoptic.engine.distributed import init_distributed
from panoptic.engine.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


def test_autocast_dtype_per_device_and_switch():
    # amp is CUDA's float16 switch, cpu_amp the CPU's bfloat16 one: neither reaches the other device
    assert autocast_dtype(CUDA, amp=True, cpu_amp=False) is torch.float16
    assert autocast_dtype(CUDA, amp=False, cpu_amp=True) is None
    assert autocast_dtype(CPU, amp=True, cpu_amp=False) is None
    assert autocast_dtype(CPU, amp=False, cpu_amp=True) is torch.bfloat16
    assert autocast_dtype(torch.device("meta"), amp=True, cpu_amp=True) is None


def _conv_dtypes(tmp_path, cache, cpu_amp: bool) -> set[torch.dtype]:
    """The output dtypes of every convolution during one training step."""
    tr = Trainer(tiny_config(tmp_path, cache, cpu_amp=cpu_amp), init_distributed("cpu"))
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in tr.model.modules() if isinstance(m, nn.Conv2d)]
    from panoptic.engine.data import train_loader

    images, targets = next(iter(train_loader(tr.train_set, 2, 0, tr.info, 0, 1, 0)))
    losses = tr._step(tr.parts, images, targets)
    for h in hooks:
        h.remove()
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), losses
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # the weights stay float32
    return seen


def test_cpu_amp_without_bfloat16_hardware_says_it_is_emulated(tmp_path, cache, monkeypatch, capsys):
    import panoptic.engine.trainer as trainer_module

    for native in (False, True):
        monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda native=native: native)
        Trainer(tiny_config(tmp_path / str(native), cache, cpu_amp=True), init_distributed("cpu"))
        err = capsys.readouterr().err
        assert ("no bfloat16 hardware" in err and "slower than float32" in err) is not native, err
    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: False)
    Trainer(tiny_config(tmp_path / "off", cache, cpu_amp=False), init_distributed("cpu"))  # float32: nothing to say
    assert "bfloat16" not in capsys.readouterr().err


def test_the_step_runs_its_convolutions_in_bfloat16_only_when_asked(tmp_path, cache):
    assert _conv_dtypes(tmp_path / "a", cache, cpu_amp=True) == {torch.bfloat16}
    assert _conv_dtypes(tmp_path / "b", cache, cpu_amp=False) == {torch.float32}


def test_bfloat16_training_lowers_the_loss_and_resumes_exactly(tmp_path, cache):
    full = train(tiny_config(tmp_path / "a", cache, iterations=16, log_every=4, cpu_amp=True, checkpoint_every=8))
    lines = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r["type"] == "train"]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    meta = read_checkpoint(full.checkpoint)["meta"]
    assert meta.config["cpu_amp"] is True
    resumed = train(tiny_config(tmp_path / "b", cache, iterations=16, log_every=4, cpu_amp=True),
                    resume=tmp_path / "a" / "run" / "checkpoint_0000008.pt")
    a, b = _flat_state(full.checkpoint), _flat_state(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fp32 = _flat_state(train(tiny_config(tmp_path / "c", cache, iterations=16, log_every=4)).checkpoint)
    assert any(not torch.equal(a[k], fp32[k]) for k in a if a[k].is_floating_point())  # really another precision


def test_train_cli_switch(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert build_config(parser.parse_args(["train", "--cpu-amp"])).cpu_amp is True
    assert build_config(parser.parse_args(["train"])).cpu_amp is False  # same numbers on every CPU by default


def test_compare_resolves_auto_to_the_hardware_and_keys_the_cache(monkeypatch, tmp_path):
    from panoptic.engine import _precision

    for native in (True, False):
        monkeypatch.setattr(_precision, "cpu_bf16_native", lambda native=native: native)
        assert CompareConfig.default().train_config("upsnet", "").cpu_amp is native
        assert CompareConfig.quick().train_config("mrcnn_psp", "").cpu_amp is native
    monkeypatch.undo()
    for forced in (True, False):
        assert CompareConfig.default(cpu_amp=forced).train_config("upsnet_c", "", 2).cpu_amp is forced
    assert isinstance(cpu_bf16_native(), bool)

    hashes = FileHashes(tmp_path / "hashes.json")
    keys = {cache_key(CompareConfig.default(cpu_amp=f).train_config("upsnet", ""), [], hashes, threads=2,
                      device="cpu") for f in (True, False)}
    assert len(keys) == 2  # bfloat16 and float32 weights never share a cached checkpoint


def test_compare_cli_switches():
    from panoptic.compare.cli import _config
    from panoptic.compare.cli import register as register_compare

    parser = argparse.ArgumentParser()
    register_compare(parser.add_subparsers(dest="command"))
    assert _config(parser.parse_args(["compare"])).cpu_amp is None
    assert _config(parser.parse_args(["compare", "--cpu-amp"])).cpu_amp is True
    assert _config(parser.parse_args(["compare", "--quick", "--no-cpu-amp"])).cpu_amp is False
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--cpu-amp", "--no-cpu-amp"])


def test_compare_records_the_precision(tmp_path):
    from panoptic.compare import run_compare

    cfg = CompareConfig.quick(models=("upsnet",), iterations=2, eval_images=2, figure_images=0, cpu_amp=True,
                              out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), progress=False)
    run_compare(cfg, log=lambda _line: None)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["training_precision"] == "bfloat16 autocast"
    assert results["config"]["cpu_amp"] is True
    assert "trained in bfloat16 autocast" in (tmp_path / "out" / "report.md").read_text()
