"""Seed spread and paired bootstrap intervals of PQ differences (`panoptic.compare.intervals`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import result_from_labels, tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic.compare.intervals import (
    BootstrapConfig,
    HeldOutSize,
    held_out_size,
    metric_stats,
    paired_bootstrap,
    pq_from_stats,
    seed_spread,
)
from panoptic.evaluation import PanopticQuality


def _image(tp: list[int], fp: list[int], fn: list[int], iou: list[float]) -> np.ndarray:
    return np.stack([tp, fp, fn, iou], -1).astype(np.float64)


def test_pq_from_stats_by_hand():
    # class 0: one match of IoU 0.8 and one miss -> 0.8 / 1.5; class 1 absent (not counted);
    # class 2: a lone false positive -> 0. PQ = (0.5333 + 0) / 2.
    stats = _image([1, 0, 0], [0, 0, 1], [1, 0, 0], [0.8, 0.0, 0.0])
    assert pq_from_stats(stats) == pytest.approx(100 * (0.8 / 1.5) / 2)
    assert pq_from_stats(np.zeros((3, 4))) == 0.0  # nothing at all


def test_summed_image_stats_give_the_evaluators_pq():
    """Parity: PQ recomputed from summed per-image statistics equals one PanopticQuality over all images."""
    table = tiny_table(2, 2)
    rng = np.random.default_rng(0)
    for case in range(20):
        total = PanopticQuality(table)
        per_image = []
        for _ in range(10):  # 200 random image pairs in all
            results = []
            for _side in range(2):
                k = int(rng.integers(1, 5))
                labels = torch.from_numpy(rng.integers(-1, k, (6, 6)))
                present = sorted(set(labels[labels >= 0].tolist()))
                remap = torch.full((k + 1,), -1, dtype=torch.int64)
                remap[torch.tensor(present) + 1] = torch.arange(len(present))
                labels = remap[labels + 1]
                results.append(result_from_labels(labels, table, rng.integers(0, 4, len(present)).tolist()))
            gt, pred = results
            one = PanopticQuality(table)
            one.update(gt, pred)
            per_image.append(metric_stats(one))
            total.update(gt, pred)
        summed = pq_from_stats(np.sum(per_image, 0))
        assert summed == pytest.approx(100 * total.compute()["All"]["pq"], abs=1e-9), case


def _two_models(gap: float, images: int = 60, seeds: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image stats of two models on the same images: one segment per class per image, b's IoU lower by gap."""
    rng = np.random.default_rng(seed)
    iou_a = rng.uniform(0.6, 0.9, (seeds, images, 3))
    a = np.stack([np.ones_like(iou_a), np.zeros_like(iou_a), np.zeros_like(iou_a), iou_a], -1)
    b = a.copy()
    b[..., 3] = iou_a - gap
    return a, b


def test_a_clear_gap_holds_and_identical_models_do_not():
    a, b = _two_models(0.05)
    iv = paired_bootstrap(a, b)
    assert iv.diff == pytest.approx(5.0) and iv.lo > 0 and iv.holds  # every image is 0.05 IoU better
    assert iv.images == 60 and iv.seeds == 2 and iv.resamples == BootstrapConfig().resamples
    same = paired_bootstrap(a, a.copy())
    assert same.diff == 0.0 and same.lo <= 0.0 <= same.hi and not same.holds
    # unpaired noise with no true gap: the interval straddles 0
    a2, _ = _two_models(0.0, seed=1)
    b2, _ = _two_models(0.0, seed=2)
    noisy = paired_bootstrap(a2, b2)
    assert noisy.lo < 0 < noisy.hi and not noisy.holds
    assert "95% interval [" in noisy.describe()


def test_the_interval_is_reproducible_and_widens_with_fewer_images():
    a, b = _two_models(0.0, images=200, seed=3)
    b[..., 3] = np.random.default_rng(4).uniform(0.6, 0.9, b.shape[:-1])
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)  # fixed resampling seed
    assert paired_bootstrap(a, b, BootstrapConfig(seed=1)) != paired_bootstrap(a, b)
    wide = paired_bootstrap(a[:, :20], b[:, :20])
    narrow = paired_bootstrap(a, b)
    assert wide.hi - wide.lo > narrow.hi - narrow.lo


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(0, 2**16))
def test_swapping_the_models_mirrors_the_interval(seeds, images, seed):
    rng = np.random.default_rng(seed)
    a = np.concatenate([rng.integers(0, 3, (seeds, images, 4, 3)), rng.uniform(0, 1, (seeds, images, 4, 1))], -1)
    b = np.concatenate([rng.integers(0, 3, (seeds, images, 4, 3)), rng.uniform(0, 1, (seeds, images, 4, 1))], -1)
    a[..., 3] *= a[..., 0]  # IoU sums need matches
    b[..., 3] *= b[..., 0]
    cfg = BootstrapConfig(resamples=200, seed=seed)
    ab, ba = paired_bootstrap(a, b, cfg), paired_bootstrap(b, a, cfg)
    assert ab.diff == pytest.approx(-ba.diff) and ab.lo == pytest.approx(-ba.hi) and ab.hi == pytest.approx(-ba.lo)
    assert ab.lo <= ab.hi


def test_bad_inputs_are_refused():
    a, b = _two_models(0.05)
    with pytest.raises(ValueError, match="same seeds, images and classes"):
        paired_bootstrap(a, b[:, :10])
    with pytest.raises(ValueError, match=r"\(seeds, images, classes, 4\)"):
        paired_bootstrap(a[0], b[0])
    with pytest.raises(ValueError, match="resamples"):
        BootstrapConfig(resamples=0)


def test_seed_spread():
    assert seed_spread(np.array([84.0, 86.0])) == (85.0, pytest.approx(np.sqrt(2.0)))
    assert seed_spread(np.array([85.0])) == (85.0, 0.0)


def test_held_out_size_images_shrink_the_image_part_not_the_seed_part():
    # Two seeds with identical statistics: the seeds contribute nothing, so the width falls as 1 / sqrt(m) and the
    # estimate is n * width**2 / gap**2.
    a, b = _two_models(0.0, images=100, seed=5)
    b[..., 3] = np.random.default_rng(6).uniform(0.6, 0.9, b.shape[:-1])
    a[1], b[1] = a[0], b[0]
    size = held_out_size(a, b)
    assert size.seeds_only == 0.0 and size.images == 100
    assert size.width == pytest.approx(paired_bootstrap(a, b).hi - paired_bootstrap(a, b).lo)
    w = size.widths
    assert sorted(w) == [50, 100, 200, 400, 800] and w[50] > w[100] > w[200] > w[400] > w[800]
    assert w[400] == pytest.approx(w[100] / 2, rel=0.15)  # four times the images: half the width
    if size.width >= size.gap:
        assert size.estimate == pytest.approx(100 * size.width ** 2 / size.gap ** 2, rel=1e-9, abs=1)
        assert "narrower than the gap from about" in size.describe()


def test_held_out_size_says_when_only_more_seeds_help():
    # The seeds disagree (seed 0: a better, seed 1: b better by as much) and the images agree: no held-out size
    # resolves a gap of about 0.
    a, b = _two_models(0.02, images=80, seed=7)
    a[1], b[1] = b[0], a[0]
    b[..., 3] -= 0.002  # a gap of 0.2 PQ on top
    size = held_out_size(a, b)
    assert size.gap < size.seeds_only and size.estimate is None
    assert "no held-out size makes it narrower than the gap; " in size.describe()
    more = size.seeds_estimate
    if more is None:
        assert size.describe().endswith("more seeds are needed")
    else:
        assert more > size.seeds and size.describe().endswith(f"about {more} seeds would (estimate)")
    # a clear gap: the images at hand are enough
    a, b = _two_models(0.05)
    assert held_out_size(a, b).describe().endswith("narrower than the gap")
    # identical rows: gap 0, nothing to resolve
    same = held_out_size(a, a.copy())
    assert same.gap == 0.0 and same.width == 0.0 and same.estimate is None


def test_seeds_estimate_by_hand():
    # width 1.0, seeds alone 0.8 with 3 seeds: the images' share is 1.0 - 0.64 = 0.36 (squared widths). A gap of
    # 0.7 leaves 0.49 - 0.36 = 0.13 for the seeds: 3 * 0.64 / 0.13 = 14.8, so 15 seeds.
    size = HeldOutSize(gap=0.7, width=1.0, images=400, seeds_only=0.8, widths={400: 1.0}, needed=None, seeds=3)
    assert size.estimate is None and size.seeds_estimate == 15
    assert size.describe().endswith("no held-out size makes it narrower than the gap; about 15 seeds would (estimate)")
    assert size.as_dict()["seeds_estimate"] == 15
    # a gap of 0.6 or 0.5: the images' share alone (0.6 wide) fills it, so seeds alone cannot do it
    assert HeldOutSize(0.6, 1.0, 400, 0.8, {400: 1.0}, None, 3).seeds_estimate is None
    assert HeldOutSize(0.5, 1.0, 400, 0.8, {400: 1.0}, None, 3).seeds_estimate is None
    # already narrower than the gap, or one seed: no estimate
    assert HeldOutSize(1.2, 1.0, 400, 0.8, {400: 1.0}, 400, 3).seeds_estimate is None
    assert HeldOutSize(0.7, 1.0, 400, 0.0, {400: 1.0}, None, 1).seeds_estimate is None
    # a width equal to the gap: the law gives the seeds at hand (3 * 0.25 / 0.25), and one more is asked for
    assert HeldOutSize(1.0, 1.0, 400, 0.5, {400: 1.0}, None, 3).seeds_estimate == 4


def test_saved_run_reproduces_its_tables_claims_and_the_documented_held_out_sizes():
    """docs/results/per_image.npz is the saved run's bootstrap input: it gives compare.json's PQs and intervals
    back exactly, and the held-out table of the compare tutorial."""
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    stats = np.load(results / "per_image.npz")
    saved = json.loads((results / "compare.json").read_text())
    for key, entry in saved["models"].items():
        assert pq_from_stats(stats[key].sum(1)).mean() == pytest.approx(entry["PQ"], abs=1e-9), key
    pairs = {"UPSNet beats MR-CNN-PSP (PQ)": ("upsnet", "mrcnn_psp"),
             "UPSNet beats UPSNet-C (PQ)": ("upsnet", "upsnet_c"),
             "unknown prediction improves PQ": ("ablation/+ unknown", "ablation/+ ICA")}
    # docs/tutorials/compare.md: gap, width, seeds alone, width with 800 / 1600 / 3200 images
    documented = {"upsnet_mrcnn_psp": (0.63, 0.91, 0.77, 0.80, 0.76, 0.73),
                  "upsnet_upsnet_c": (0.61, 0.93, 0.79, 0.82, 0.79, 0.76),
                  "ablation/+ unknown_ablation/+ ICA": (4.49, 0.78, 0.42, 0.60, 0.52, 0.44)}
    for claim in saved["claims"]:
        a, b = (stats[k] for k in pairs[claim["claim"]])
        iv = paired_bootstrap(a, b)
        assert (iv.diff, iv.lo, iv.hi) == pytest.approx((claim["pq_diff"], claim["lo"], claim["hi"]), abs=1e-12)
        size = held_out_size(a, b)
        assert json.loads(json.dumps(size.as_dict())) == claim["held_out"]  # the saved run's report lines
        got = (size.gap, size.width, size.seeds_only, size.widths[800], size.widths[1600], size.widths[3200])
        assert tuple(round(v, 2) for v in got) == documented["_".join(pairs[claim["claim"]])]


def test_held_out_size_with_one_seed_or_a_vanishing_gap():
    a, b = _two_models(0.0, images=50, seeds=1, seed=8)
    b[..., 3] = np.random.default_rng(9).uniform(0.6, 0.9, b.shape[:-1])
    size = held_out_size(a, b)
    assert size.seeds == 1 and size.seeds_only == 0.0
    assert "one seed: the seeds' share is not measured" in size.describe()
    # a gap of about 0.01 PQ: no absurd image count
    b2 = a.copy()
    b2[..., 3] += np.random.default_rng(10).normal(0, 0.05, a.shape[:-1])
    b2[..., 3] += a[..., 3].mean() - b2[..., 3].mean() - 1e-4  # mean IoU 1e-4 below a's: a gap of 0.01 PQ
    tiny = held_out_size(a, b2)
    assert 0 < tiny.gap < 0.05 and tiny.estimate > 100 * tiny.images
    assert tiny.describe().endswith("needs more than 100 times these images")
    # no gap at all
    assert held_out_size(a, a.copy()).describe().endswith("the rows do not differ, so no held-out size resolves a gap")
