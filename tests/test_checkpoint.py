"""Checkpoints: round trips (.pt read by ``torch.load(weights_only=True)``, .safetensors), atomic writes, and a
clear error for corrupt, truncated, foreign, wrong-model and wrong-category-table checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from panoptic.data import synthetic_categories, write_synthetic_dataset
from panoptic.engine import (
    CheckpointError,
    TrainConfig,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from panoptic.engine._table_check import check_table
from panoptic.engine.checkpoint import build_named_model
from panoptic.engine.cli import main
from panoptic.engine.distributed import DistInfo
from panoptic.engine.trainer import Trainer

TABLE = synthetic_categories()
KW = {"fpn_channels": 8}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_named_model("upsnet_cpu_small", TABLE, KW)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", model, model_name="upsnet_cpu_small",
                           table=TABLE, model_kwargs=KW, iteration=7, metrics={"pq": 0.5})


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else
        all(torch.equal(sa[k][j], sb[k][j]) for j in sa[k]) for k in sa)


class Foreign:
    """An arbitrary pickled object."""

    def __init__(self) -> None:
        self.x = 1


# ---------------------------------------------------------------------------------------- round trips
def test_pt_round_trip_loads_with_weights_only(ckpt, model):
    raw = torch.load(ckpt, weights_only=True)
    assert raw["format"] == "panoptic-checkpoint" and isinstance(raw["meta"], str)
    meta = json.loads(raw["meta"])
    assert meta["model"] == "upsnet_cpu_small" and meta["categories"] == TABLE.to_coco()
    loaded, table, info = load_checkpoint(ckpt)
    assert table == TABLE and info.iteration == 7 and info.metrics == {"pq": 0.5} and info.model_kwargs == KW
    assert not loaded.training and _same_weights(loaded, model)
    assert not list(ckpt.parent.glob("*.tmp"))


def test_safetensors_round_trip(tmp_path, model):
    model.generator.manual_seed(123)
    path = save_checkpoint(tmp_path / "m.safetensors", model, model_name="upsnet_cpu_small", table=TABLE,
                           model_kwargs=KW, optimizers={"model": {}})
    loaded, table, meta = load_checkpoint(path)
    assert table == TABLE and meta.model == "upsnet_cpu_small" and _same_weights(loaded, model)
    assert torch.equal(loaded.generator.get_state(), model.generator.get_state())
    assert "optimizers" not in read_checkpoint(path)  # weights only


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model, model_name="upsnet_cpu_small", table=TABLE, model_kwargs=KW)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"PK\x03\x04 half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, model_name="upsnet_cpu_small", table=TABLE, model_kwargs=KW, iteration=9)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


# -------------------------------------------------------------------------------------- bad files
def test_corrupt_truncated_and_foreign_files_fail_clearly(tmp_path, ckpt):
    cases = {}
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    cases["text.pt"] = "neither a torch.save zip file nor a safetensors"
    data = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    cases["trunc.pt"] = "truncated or corrupt"
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid:mid + 64] = bytes(64)
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    cases["flipped.pt"] = "corrupt"
    torch.save({"weight": torch.ones(2)}, tmp_path / "state_dict.pt")
    cases["state_dict.pt"] = "plain state_dict"
    torch.save({"obj": Foreign()}, tmp_path / "object.pt")
    cases["object.pt"] = "refuses"
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    cases["legacy.pt"] = "legacy pickled"
    torch.save({"format": "panoptic-checkpoint", "version": 99, "meta": "{}", "model": {}}, tmp_path / "new.pt")
    cases["new.pt"] = "upgrade panoptic"
    torch.save({"format": "panoptic-checkpoint", "version": 1, "meta": "{oops", "model": {}}, tmp_path / "meta.pt")
    cases["meta.pt"] = "metadata is corrupt"
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as e:
            load_checkpoint(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_wrong_model_name_and_mismatched_weights(tmp_path, ckpt, model):
    with pytest.raises(CheckpointError, match="holds a 'upsnet_cpu_small' model, not 'mrcnn_psp_cpu_small'"):
        load_checkpoint(ckpt, model_name="mrcnn_psp_cpu_small")
    raw = torch.load(ckpt, weights_only=True)
    raw["meta"] = raw["meta"].replace('"upsnet_cpu_small"', '"upsnet_gone"')
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="model 'upsnet_gone', which this version of panoptic does not know"):
        load_checkpoint(tmp_path / "unknown.pt")
    raw = torch.load(ckpt, weights_only=True)
    raw["meta"] = raw["meta"].replace('"fpn_channels": 8', '"fpn_channels": 16')
    torch.save(raw, tmp_path / "kwargs.pt")
    with pytest.raises(CheckpointError, match=r"do not fit the model.*shape mismatches"):
        load_checkpoint(tmp_path / "kwargs.pt")


def test_category_table_mismatch_names_both_tables_and_the_fix(ckpt):
    other = json.loads(json.dumps(TABLE.to_coco()))
    other[0]["name"] = "ocean"
    other.append({"id": 200, "name": "cloud", "isthing": 0})
    from panoptic import CategoryTable

    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt, table=CategoryTable.from_coco(other[1:]))
    msg = str(e.value)
    assert "only in the checkpoint: 119:sky(stuff)" in msg and "only in the data: 200:cloud(stuff)" in msg
    assert "train a new model" in msg
    with pytest.raises(CheckpointError, match=r"id 119 is 119:sky.*but 119:ocean"):
        check_table(TABLE, CategoryTable.from_coco(other))
    check_table(TABLE, CategoryTable.from_coco([{**c, "color": [1, 2, 3]} for c in TABLE.to_coco()]))  # colours ok


# -------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """The synthetic data with one extra (unused) category in its JSONs."""
    root = tmp_path_factory.mktemp("other")
    paths = write_synthetic_dataset(root, 4, 64, splits={"train": 1.0})
    data = json.loads(paths["train"].read_text())
    data["categories"].append({"id": 300, "name": "lava", "isthing": 0})
    paths["train"].write_text(json.dumps(data))
    return root


def test_resume_refuses_another_table_or_model(tmp_path, ckpt, other_data):
    cfg = TrainConfig.from_dict({"model_kwargs": KW, "data": {"root": str(other_data)}, "out_dir": str(tmp_path)})
    trainer = Trainer(cfg, DistInfo())
    with pytest.raises(CheckpointError, match="only in the data: 300:lava"):
        trainer.resume(ckpt)
    cfg = TrainConfig.from_dict({"model": "upsnet_c_cpu_small", "model_kwargs": KW,
                                 "data": {"root": str(other_data)}, "out_dir": str(tmp_path)})
    with pytest.raises(CheckpointError, match="pass --model upsnet_cpu_small"):
        Trainer(cfg, DistInfo()).resume(ckpt)


def test_cli_reports_checkpoint_errors(tmp_path, capsys, other_data):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    rc = main(["train", "--data", str(other_data), "--model-arg", "fpn_channels=8", "--out", str(tmp_path / "r"),
               "--resume", str(tmp_path / "bad.pt"), "--no-progress"])
    assert rc == 2 and "not a panoptic checkpoint" in capsys.readouterr().err
    rc = main(["train", "--data", str(other_data), "--out", str(tmp_path / "r2"), "--resume"])
    assert rc == 2 and "nothing to resume" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path), "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "p")])
    assert rc == 2 and "not a panoptic checkpoint" in capsys.readouterr().err
