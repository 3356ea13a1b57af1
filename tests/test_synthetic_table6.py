"""The synthetic scene features that give each Table 6 row something to change: stuff patches, same-class pairs,
thin things, decoy patches; and the ``"table6"`` preset as the compare benchmark's data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic.compare import CompareConfig
from panoptic.data.synthetic import (
    _CATALOG,
    SCENE_PRESETS,
    SceneConfig,
    _Canvas,
    _paint_decoy_patches,
    _paint_stuff_patches,
    generate_scene,
    synthetic_categories,
)
from panoptic.engine.config import ConfigError, DataConfig
from panoptic.engine.data import synthetic_benchmark

TABLE = synthetic_categories()
STYLES = [_CATALOG[n][3] for n in TABLE.names]
THINGS = list(range(TABLE.num_stuff, TABLE.num_classes))
# One thing per scene, nothing else: what a feature does is all there is to see.
BARE = SceneConfig(num_things=(1, 1), crowd_prob=0.0, void_border_prob=0.0, void_blob_prob=0.0,
                   min_visible_fraction=0.0, noise=0.0)


def _two_region_canvas(size: int = 40) -> _Canvas:
    """Left half grass (segment 0), right half road (segment 1), black image."""
    canvas = _Canvas((size, size))
    canvas.labels[:, : size // 2] = canvas.new_segment(TABLE.names.index("grass"), False)
    canvas.labels[:, size // 2:] = canvas.new_segment(TABLE.names.index("road"), False)
    return canvas


def test_stuff_patch_is_painted_inside_one_stuff_region_and_labelled_stuff():
    cfg = SceneConfig(stuff_patches=(1, 1), thing_radius=(0.15, 0.15))
    painted_any = False
    for seed in range(10):
        canvas = _two_region_canvas()
        labels = canvas.labels.copy()
        _paint_stuff_patches(np.random.default_rng(seed), canvas, STYLES, THINGS, cfg)
        painted = canvas.image.any(axis=-1)
        assert (canvas.labels == labels).all()  # the patch is stuff: no segment of its own
        assert len(canvas.category) == 2 and not any(canvas.isthing)
        if painted.any():
            painted_any = True
            regions = np.unique(labels[painted])
            assert len(regions) == 1  # clipped to the stuff region under its centre
            assert 10 <= painted.sum() < (labels == regions[0]).sum()  # a thing-sized patch, not the region
    assert painted_any


def test_stuff_patch_is_darker_than_its_region_in_a_scene():
    base = dataclasses.replace(BARE, num_things=(0, 0), stuff_regions=(1, 1))
    for seed in range(5):
        plain = generate_scene(np.random.default_rng(seed), 64, config=base)
        on = dataclasses.replace(base, stuff_patches=(2, 2))
        patched = generate_scene(np.random.default_rng(seed), 64, config=on)
        # Ground truth is identical (one stuff segment); only the image carries the patches.
        assert torch.equal(plain.panoptic.segment_map, patched.panoptic.segment_map)
        assert patched.panoptic.num_segments == 1 and not patched.panoptic.isthing.any()
    assert patched.image.mean() <= plain.image.mean() + 10  # darker patches (a new texture draw, so roughly)


def test_same_class_pairs_overlap_and_share_their_class():
    cfg = dataclasses.replace(BARE, same_class_prob=1.0)
    for seed in range(10):
        scene = generate_scene(np.random.default_rng(seed), 96, config=cfg)
        if len(scene.labels) < 2:  # the partner may fall outside the image
            continue
        assert len(scene.labels) == 2 and scene.labels[0] == scene.labels[1]
        assert (scene.amodal_masks[0] & scene.amodal_masks[1]).any()  # they overlap
        assert not (scene.masks[0] & scene.masks[1]).any()  # the second occludes the first
    off = generate_scene(np.random.default_rng(0), 96, config=BARE)
    assert len(off.labels) <= 1


def _elongation(mask: torch.Tensor) -> float:
    """Ratio of the long to the short axis of a mask's pixel cloud."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cov = np.cov(np.stack([ys.numpy(), xs.numpy()]).astype(np.float64))
    lo, hi = np.linalg.eigvalsh(cov)
    return float(np.sqrt(hi / max(lo, 1e-9)))


def test_thin_discs_and_squares_are_elongated():
    thin_cfg = dataclasses.replace(BARE, thin_prob=1.0, thing_radius=(0.1, 0.12))
    seen = 0
    for seed in range(30):
        scene = generate_scene(np.random.default_rng(seed), 128, config=thin_cfg)
        for label, amodal in zip(scene.labels.tolist(), scene.amodal_masks, strict=True):
            name = TABLE.names[label + TABLE.num_stuff]
            border = amodal[0].any() or amodal[-1].any() or amodal[:, 0].any() or amodal[:, -1].any()
            if name in ("disc", "square") and not border:
                assert _elongation(amodal) > 3.0  # aspect 4-7
                seen += 1
    assert seen >= 3
    round_scene = generate_scene(np.random.default_rng(0), 128, config=dataclasses.replace(BARE, num_things=(3, 3)))
    assert all(_elongation(m) < 2.0 for m in round_scene.amodal_masks if m.sum() > 20
               and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(24, 56), patches=st.integers(0, 3),
       pair=st.floats(0.0, 1.0), thin=st.floats(0.0, 1.0))
def test_generated_ground_truth_is_consistent_with_any_feature_mix(seed, size, patches, pair, thin):
    cfg = SceneConfig(stuff_patches=(0, patches), same_class_prob=pair, thin_prob=thin)
    scene = generate_scene(np.random.default_rng(seed), size, config=cfg)
    pan = scene.panoptic
    pan.validate(TABLE)  # ids 1..K, each segment present, categories valid, isthing agrees with the table
    seg = pan.segment_map.long()
    ids = torch.unique(seg[seg > 0])
    assert torch.equal(ids, torch.arange(1, pan.num_segments + 1))  # one segment per id: no overlap possible
    assert bool(((pan.category >= 0) & (pan.category < TABLE.num_classes)).all())
    for k in range(len(scene.labels)):  # thing targets are exactly their segments, disjoint
        assert torch.equal(scene.masks[k], seg == scene.segment_ids[k])
        assert bool((scene.amodal_masks[k] | ~scene.masks[k]).all())  # visible part within the full shape
    assert int(scene.masks.sum()) == int(scene.masks.any(0).sum())


def test_scene_config_rejects_bad_feature_values():
    with pytest.raises(ValueError, match="same_class_prob"):
        SceneConfig(same_class_prob=1.5)
    with pytest.raises(ValueError, match="stuff_patches"):
        SceneConfig(stuff_patches=(3, 1))


def test_plain_preset_is_the_default_scene():
    assert SCENE_PRESETS["plain"] == SceneConfig()
    t6 = SCENE_PRESETS["table6"]
    assert t6.stuff_patches[1] > 0 and t6.same_class_prob > 0 and t6.thin_prob > 0


def test_compare_benchmark_uses_table6_scenes_and_400_held_out_images():
    data = CompareConfig.default().data
    assert data.synthetic_scenes == "table6"
    assert round(data.synthetic_n * data.synthetic_val_fraction) == 400
    assert CompareConfig.quick().data.synthetic_scenes == "table6"
    with pytest.raises(ConfigError, match="synthetic_scenes"):
        DataConfig(synthetic_scenes="hard")


def test_synthetic_benchmark_keeps_presets_in_separate_folders(tmp_path):
    base = DataConfig(synthetic_n=3, synthetic_size=32, cache_dir=str(tmp_path))
    plain = synthetic_benchmark(base)
    t6 = synthetic_benchmark(dataclasses.replace(base, synthetic_scenes="table6"))
    assert plain != t6 and plain.name + "_table6" == t6.name
    assert (plain / "DONE").is_file() and (t6 / "DONE").is_file()


def test_scene_reports_its_stuff_patches_inside_stuff_and_its_thin_things():
    cfg = dataclasses.replace(SCENE_PRESETS["table6"], thin_prob=1.0)
    scene = generate_scene(np.random.default_rng(3), 96, config=cfg)
    pan = scene.panoptic
    assert len(scene.stuff_patch_masks) >= 1 and scene.thin.all() and len(scene.thin) == len(scene.labels)
    for patch in scene.stuff_patch_masks:
        ids = torch.unique(pan.segment_map[patch])
        assert len(ids) == 1 and ids[0] > 0  # inside one segment ...
        assert not pan.isthing[ids[0] - 1]  # ... whose class is stuff
    plain = generate_scene(np.random.default_rng(3), 96)
    assert plain.stuff_patch_masks.shape == (0, 96, 96) and not plain.thin.any()


def test_decoy_patch_is_a_checkered_thing_picture_labelled_as_the_stuff_around_it():
    cfg = SceneConfig(decoy_patches=(1, 1), thing_radius=(0.15, 0.15))
    painted_any = False
    for seed in range(10):
        canvas = _two_region_canvas()
        labels = canvas.labels.copy()
        _paint_decoy_patches(np.random.default_rng(seed), canvas, STYLES, THINGS, cfg)
        painted = canvas.image.any(axis=-1)
        assert (canvas.labels == labels).all()  # the decoy is stuff: no segment of its own
        assert len(canvas.category) == 2 and not any(canvas.isthing)
        assert len(canvas.patches) == int(painted.any())  # recorded with the stuff patches
        if painted.any():
            painted_any = True
            assert (canvas.patches[0] == painted).all()
            regions = np.unique(labels[painted])
            assert len(regions) == 1  # clipped to the stuff region under its centre
            assert 10 <= painted.sum() < (labels == regions[0]).sum()
            # The fine print: neighbouring pixels of the picture alternate bright / dark far more than a thing's
            # smooth shading does.
            ys, xs = np.nonzero(painted[:, :-1] & painted[:, 1:])
            jump = np.abs(canvas.image[ys, xs].sum(-1) - canvas.image[ys, xs + 1].sum(-1))
            assert np.median(jump) > 20
    assert painted_any


def test_scene_records_decoys_inside_stuff_and_the_decoy_preset_is_table6_plus_decoys():
    t6, decoys = SCENE_PRESETS["table6"], SCENE_PRESETS["table6_decoys"]
    assert decoys == dataclasses.replace(t6, decoy_patches=decoys.decoy_patches) and decoys.decoy_patches[0] >= 1
    base = dataclasses.replace(BARE, num_things=(0, 0))
    found = 0
    for seed in range(5):
        plain = generate_scene(np.random.default_rng(seed), 64, config=base)
        scene = generate_scene(np.random.default_rng(seed), 64, config=dataclasses.replace(base,
                                                                                            decoy_patches=(2, 2)))
        # Same ground truth (decoys are labelled as the stuff around them), only the image differs.
        assert torch.equal(plain.panoptic.segment_map, scene.panoptic.segment_map)
        assert not scene.panoptic.isthing.any() and plain.stuff_patch_masks.shape[0] == 0
        for patch in scene.stuff_patch_masks:
            ids = torch.unique(scene.panoptic.segment_map[patch])
            assert len(ids) == 1 and ids[0] > 0 and not scene.panoptic.isthing[ids[0] - 1]
            found += int(patch.any())
    assert found >= 5
    with pytest.raises(ValueError, match="decoy_patches"):
        SceneConfig(decoy_patches=(2, 1))
    with pytest.raises(ValueError, match="decoy_patches"):
        SceneConfig(decoy_patches=(-1, 1))
    assert DataConfig(synthetic_scenes="table6_decoys").synthetic_scenes == "table6_decoys"
