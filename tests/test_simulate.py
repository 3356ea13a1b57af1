"""The simulated head outputs of every fusion family (panoptic.simulate): the ground truth without noise, and
errors only where their docstrings say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CentreOffsetFusion, CentreOffsets, MaskFormerFusion, Queries
from panoptic.data.synthetic import generate_scene
from panoptic.evaluation import PanopticQuality
from panoptic.simulate import simulate_centre_offsets, simulate_queries

SEEDS = range(12)  # fixed scenes for the near-oracle checks (their PQ is a property of these scenes)


def _pq(scene, result) -> dict[str, float]:
    metric = PanopticQuality(scene.table)
    metric.update(scene.panoptic, result)
    return {k: v["pq"] for k, v in metric.compute().items() if k in ("All", "Things", "Stuff")}


def _claims(scene, cls: torch.Tensor, masks: torch.Tensor) -> list[tuple[int, int]]:
    """``(ground-truth segment index, predicted class)`` of every query that predicts an object, the segment
    read at its mask's largest logit (``mask_stride=1``)."""
    best = cls.argmax(-1)
    flat = scene.panoptic.segment_map.reshape(-1)
    return sorted((int(flat[masks[q].reshape(-1).argmax()]) - 1, int(best[q]))
                  for q in range(len(cls)) if int(best[q]) != cls.shape[1] - 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_free_queries_give_the_ground_truth(seed):
    scene = generate_scene(np.random.default_rng(seed), 64)
    cls, masks = simulate_queries(scene, np.random.default_rng(seed), mask_stride=1, miss_prob=0.0,
                                  confuse_prob=0.0, duplicates=0)
    gt = scene.panoptic
    assert _claims(scene, cls, masks) == [(i, int(gt.category[i])) for i in range(gt.num_segments)]
    result = MaskFormerFusion(scene.table)(Queries(cls, masks), output_size=(64, 64))[0]
    assert result.num_segments == gt.num_segments
    assert _pq(scene, result)["All"] > 0.98


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_query_misses_and_confusions_hit_things_only(seed, miss):
    scene = generate_scene(np.random.default_rng(seed), 64)
    gt, table = scene.panoptic, scene.table
    thing = [bool(gt.isthing[i]) and not bool(gt.iscrowd[i]) for i in range(gt.num_segments)]
    cls, masks = simulate_queries(scene, np.random.default_rng(seed), mask_stride=1, duplicates=0,
                                  miss_prob=1.0 if miss else 0.0, confuse_prob=0.0 if miss else 1.0)
    claims = _claims(scene, cls, masks)
    if miss:  # every thing missed; stuff and crowds kept with their class
        assert claims == [(i, int(gt.category[i])) for i in range(gt.num_segments) if not thing[i]]
        return
    assert [seg for seg, _ in claims] == list(range(gt.num_segments))  # nothing missed
    for seg, label in claims:
        if thing[seg] and table.num_things > 1:  # another thing class
            assert table.isthing(label) and label != int(gt.category[seg])
        elif not thing[seg]:
            assert label == int(gt.category[seg])


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_free_centres_give_one_centre_per_thing(seed):
    scene = generate_scene(np.random.default_rng(seed), 64)
    sem, heat, off = simulate_centre_offsets(scene, np.random.default_rng(seed), miss_prob=0.0, offset_noise=0.0,
                                             false_centres=0, noise=0.0)
    fusion = CentreOffsetFusion(scene.table, stuff_area=0, nms_kernel=3)
    visible = int(sum(bool(m.any()) for m in scene.masks))
    assert int(fusion.find_centres(heat[0]).shape[0]) == visible  # no centre split on a pixel edge
    metric = PanopticQuality(scene.table)
    metric.update(scene.panoptic, fusion([CentreOffsets(sem, heat, off)])[0])
    rows = metric.compute()
    assert rows["Things"]["rq"] == 1.0 and rows["Stuff"]["pq"] > 0.98
    if not bool(scene.panoptic.iscrowd.any()):  # a crowd has no centre: its pixels join a thing's segment
        assert rows["Things"]["pq"] > 0.98


def test_default_simulations_are_near_oracle_but_not_perfect():
    """The demo's defaults: both families well above chance on average, neither a copy of the ground truth."""
    pqs: dict[str, list[float]] = {"queries": [], "centres": []}
    for seed in range(6):
        scene = generate_scene(np.random.default_rng(seed), 128)
        queries = Queries(*simulate_queries(scene, np.random.default_rng(seed)))
        pqs["queries"].append(_pq(scene, MaskFormerFusion(scene.table)(queries, output_size=(128, 128))[0])["All"])
        x = CentreOffsets(*simulate_centre_offsets(scene, np.random.default_rng(seed)))
        pqs["centres"].append(_pq(scene, CentreOffsetFusion(scene.table, stuff_area=256)([x])[0])["All"])
    for name, values in pqs.items():
        assert 0.75 < float(np.mean(values)) < 1.0, (name, values)
        assert min(values) < 0.99, (name, values)
