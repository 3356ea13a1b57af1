"""Inputs that used to give a silently wrong result or a raw traceback now give a clear error (issue 16):
category tables, predict's test scales, meta-device fusion inputs, a torch zip named ``*.safetensors``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from panoptic.categories import CategoryError, CategoryTable
from panoptic.data import synthetic_categories
from panoptic.engine.checkpoint import build_named_model, load_checkpoint, save_checkpoint
from panoptic.engine.predict import check_scales, predict_image
from panoptic.errors import PanopticError
from panoptic.fusion import HeuristicFusion, UPSNetFusion
from panoptic.structures import Instances


# ------------------------------------------------------------------------------------ category tables
@pytest.mark.parametrize(("categories", "match"), [
    ([{"id": 7.9, "name": "road", "isthing": 0}], r"category #0 \('road'\): 'id' must be an integer, got 7.9"),
    ([{"id": None, "isthing": 0}], r"category #0: 'id' must be an integer, got None"),
    ([{"id": True, "isthing": 0}], r"'id' must be an integer, got True"),
    ([{"id": "3", "isthing": 0}], r"'id' must be an integer, got '3'"),
    ({"id": 1, "name": "person", "isthing": 1}, r"must be a list of dicts .* got a dict with keys \['id', 'isthing'"),
    ([{"id": 1, "isthing": 1, "color": 5}], r"'color' must be 3 ints"),
])
def test_bad_category_tables_are_clear_errors(categories, match):
    with pytest.raises(CategoryError, match=match) as e:
        CategoryTable.from_coco(categories)
    assert isinstance(e.value, PanopticError) and isinstance(e.value, ValueError)


def test_an_integral_id_is_kept_exactly():
    assert CategoryTable.from_coco([{"id": 7, "isthing": 0}]).dataset_ids == (7,)


def test_non_utf8_category_json_names_the_file(tmp_path):
    path = tmp_path / "cats.json"
    path.write_bytes('[{"id": 1, "isthing": 1, "name": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(CategoryError, match=rf"{path}: it is not UTF-8 text .*save the file as UTF-8"):
        CategoryTable.from_json(path)
    path.write_text(json.dumps({"id": 1, "isthing": 1}), encoding="utf-16")  # UTF-16 JSON is fine
    with pytest.raises(CategoryError, match="has no 'categories' key"):
        CategoryTable.from_json(path)


# --------------------------------------------------------------------------------------- test scales
@pytest.mark.parametrize("scales", [[0.0], [-1.0], [1.0, float("nan")], []])
def test_non_positive_scales_are_refused(scales):
    with pytest.raises(ValueError, match="scale"):
        check_scales(scales)


def test_a_scale_that_shrinks_the_image_below_the_network_is_refused():
    check_scales([0.25, 1.0, 2.0], (128, 160))
    with pytest.raises(ValueError, match=r"test scale 0.01 shrinks the 128x160 image to a short side of 1 px.*"
                                         r"scales >= 0.125"):
        check_scales([1.0, 0.01], (128, 160))
    model = build_named_model("upsnet_cpu_small", synthetic_categories(), {"fpn_channels": 8}).eval()
    for s in (0.0, -1.0, 0.01):
        with pytest.raises(ValueError, match="scale"):
            predict_image(model, torch.rand(3, 64, 64), scales=[1.0, s])


def test_cli_predict_refuses_bad_scales(tmp_path, capsys):
    from panoptic.cli import main

    table = synthetic_categories()
    model = build_named_model("upsnet_cpu_small", table, {"fpn_channels": 8})
    ckpt = save_checkpoint(tmp_path / "m.pt", model, model_name="upsnet_cpu_small", table=table,
                           model_kwargs={"fpn_channels": 8})
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    for s in ("0", "-1", "0.01"):
        code = main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                     "--scales", "1", s])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "scale" in err, err
    assert not (tmp_path / "o" / "panoptic.json").exists()


# ------------------------------------------------------------------------------------- fusion inputs
@pytest.mark.parametrize("fusion", [UPSNetFusion, HeuristicFusion])
@pytest.mark.parametrize("where", ["semantic", "instances"])
def test_fusions_refuse_meta_tensors_clearly(fusion, where):
    table = synthetic_categories()
    sem_dev, inst_dev = ("meta", "cpu") if where == "semantic" else ("cpu", "meta")
    sem = torch.zeros(1, table.num_classes, 16, 16, device=sem_dev)
    inst = Instances.empty(device=inst_dev)
    with pytest.raises(ValueError, match="'meta' device, which have shapes but no values"):
        fusion(table)(sem, [inst])


# ------------------------------------------------------------------------------------------ checkpoints
def test_the_checkpoint_loader_is_chosen_by_content_not_suffix(tmp_path):
    table = synthetic_categories()
    model = build_named_model("upsnet_cpu_small", table, {"fpn_channels": 8})
    pt = save_checkpoint(tmp_path / "m.pt", model, model_name="upsnet_cpu_small", table=table,
                         model_kwargs={"fpn_channels": 8})
    st = save_checkpoint(tmp_path / "m.safetensors", model, model_name="upsnet_cpu_small", table=table,
                         model_kwargs={"fpn_channels": 8})
    shutil.copy(pt, tmp_path / "zip.safetensors")
    shutil.copy(st, tmp_path / "st.pt")
    for name in ("zip.safetensors", "st.pt"):
        loaded, _, meta = load_checkpoint(tmp_path / name)
        assert meta.model == "upsnet_cpu_small"
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters(), strict=True))


# ------------------------------------------------------------------------------------ float64 logits
def test_float64_logits_beyond_float32_are_named_and_ordinary_ones_fuse_as_float32():
    """The fusions compute in float32: a finite float64 logit beyond its range was reported as "NaN or inf" by the
    built-in fusions (and became inf silently in a fusion that leaves the check to prepare_semantic)."""
    from panoptic.fusion.base import prepare_semantic

    table = synthetic_categories()
    sem = torch.randn(1, table.num_classes, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for fusion in (UPSNetFusion(table, stuff_area_limit=0), HeuristicFusion(table, stuff_area_limit=0)):
        assert fusion(sem, [Instances.empty()])[0].equal(fusion(sem.float(), [Instances.empty()])[0])
    sem[0, 0, 1, 2] = 1e300
    for fusion in (UPSNetFusion(table), HeuristicFusion(table)):
        with pytest.raises(ValueError, match="float64 values beyond float32's range"):
            fusion(sem, [Instances.empty()])
    with pytest.raises(ValueError, match="float64 values beyond float32's range"):
        prepare_semantic(sem, table, 1, None, check_finite=True)
    sem[0, 0, 1, 2] = float("inf")  # a real inf keeps its own message
    with pytest.raises(ValueError, match="NaN or inf"):
        prepare_semantic(sem, table, 1, None, check_finite=True)
