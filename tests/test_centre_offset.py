"""CentreOffsetFusion: hand-computed rules, parity with Panoptic-DeepLab's post-processing, invariants, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from centre_reference import reference_panoptic
from conftest import tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CentreOffsetFusion, CentreOffsets
from panoptic._ops.centre import nearest_centre
from panoptic.fusion.centre_offset import encode_label_divisor

TABLE = tiny_table(2, 3)  # stuff 0, 1; things 2, 3, 4
THINGS = {2, 3, 4}


def one_hot(labels: list[list[int]], c: int = 5) -> torch.Tensor:
    """``(C, H, W)`` logits whose argmax is ``labels``."""
    return F.one_hot(torch.tensor(labels), c).permute(2, 0, 1).float()


def fuse(labels, heat, offsets=None, **kw) -> torch.Tensor:
    """The detectron2-style code map of one image (void -1), fused from logits."""
    heat_t = torch.tensor(heat, dtype=torch.float32)[None]
    off = torch.zeros(2, *heat_t.shape[1:]) if offsets is None else offsets
    kw.setdefault("stuff_area", 0)
    fusion = CentreOffsetFusion(TABLE, **kw)
    result = fusion([CentreOffsets(one_hot(labels), heat_t, off)])[0]
    result.validate(TABLE)
    return fusion.encode(result)


# ------------------------------------------------------------------------------------------ hand-computed rules
def test_threshold_is_strict_and_centres_must_be_positive():
    labels = [[2, 2, 2]]
    assert fuse(labels, [[0.0, 0.1, 0.0]], threshold=0.1).tolist() == [[-1, -1, -1]]  # 0.1 > 0.1 fails
    assert fuse(labels, [[0.0, 0.2, 0.0]], threshold=0.1).tolist() == [[2001] * 3]
    assert fuse(labels, [[-0.5, -0.2, -0.5]], threshold=-1.0).tolist() == [[-1, -1, -1]]  # a peak must be > 0


def test_flat_maximum_gives_a_centre_per_pixel():
    # two equal neighbours are both maxima of their 3x3 windows: two centres, the left pixel joins centre 0
    heat = [[0.0, 0.5, 0.5, 0.0]]
    assert fuse([[2, 2, 2, 2]], heat, nms_kernel=3).tolist() == [[2001, 2001, 2002, 2002]]


def test_top_k_keeps_values_strictly_above_the_kth():
    heat = [[0.9, 0, 0.5, 0, 0.5, 0, 0.3]]
    labels = [[2] * 7]
    # 4 peaks, top_k = 2: the 2nd value is 0.5, so only 0.9 stays (both 0.5 go)
    assert fuse(labels, heat, nms_kernel=1, top_k=2).unique().tolist() == [2001]
    # exactly top_k = 4 peaks: detectron2 keeps those > 0.3 (three), deeplab2 keeps all four
    assert fuse(labels, heat, nms_kernel=1, top_k=4).unique().tolist() == [2001, 2002, 2003]
    assert fuse(labels, heat, nms_kernel=1, top_k=4, flavor="deeplab2").unique().tolist() == [2001, 2002, 2003, 2004]
    assert fuse(labels, heat, nms_kernel=1, top_k=1).tolist() == [[-1] * 7]  # top_k = 1 never keeps a centre
    assert fuse(labels, heat, nms_kernel=1, top_k=None).unique().tolist() == [2001, 2002, 2003, 2004]


def test_offsets_are_dy_then_dx_and_distance_ties_go_to_the_lower_centre():
    labels = [[2, 2, 2, 2, 2]] * 3
    heat = torch.zeros(3, 5)
    heat[0, 0] = heat[2, 4] = 1.0  # centre 0 at (0, 0), centre 1 at (2, 4)
    off = torch.zeros(2, 3, 5)
    off[0, 1, 2] = 1.0   # (1, 2) + dy 1 -> (2, 2): centre 0 at distance sqrt(8), centre 1 at 2
    off[1, 0, 3] = -3.0  # (0, 3) + dx -3 -> (0, 0): centre 0
    out = fuse(labels, heat.tolist(), off, nms_kernel=3)
    assert out[1, 2] == 2002 and out[0, 3] == 2001
    # (1, 2) without offset: distances sqrt(5) to both centres -> the lower index
    assert out[1, 1] == 2001 and fuse(labels, heat.tolist(), torch.zeros(2, 3, 5), nms_kernel=3)[1, 2] == 2001


def test_majority_vote_ties_to_the_smallest_class_and_counters_per_class():
    # one centre owns two pixels of class 3 and two of class 2 -> class 2
    assert fuse([[3, 3, 2, 2]], [[0, 1.0, 0, 0]], nms_kernel=5).tolist() == [[2001] * 4]
    # three centres (kernel 1): classes 4, 2, 4 -> 4001, 2001, 4002 (ids per class, in centre order)
    assert fuse([[4, 2, 4]], [[1.0, 1.0, 1.0]], nms_kernel=1).tolist() == [[4001, 2001, 4002]]


def test_stuff_area_boundary_per_flavor():
    labels = [[0, 0, 0, 1, 1]]
    heat = [[0.0] * 5]
    assert fuse(labels, heat, stuff_area=3).tolist() == [[0, 0, 0, -1, -1]]  # detectron2: area >= 3 kept
    assert fuse(labels, heat, stuff_area=3, flavor="deeplab2").tolist() == [[-1] * 5]  # deeplab2: area > 3
    assert fuse(labels, heat, stuff_area=2, flavor="deeplab2").tolist() == [[0, 0, 0, -1, -1]]


def test_no_centre_voids_things_or_gives_one_segment_per_class():
    labels = [[0, 2, 2, 3]]
    heat = [[0.0] * 4]
    assert fuse(labels, heat).tolist() == [[0, -1, -1, -1]]
    assert fuse(labels, heat, flavor="deeplab2").tolist() == [[0, 2000, 2000, 3000]]


def test_result_table_sources_and_scores():
    heat = torch.tensor([[0.0, 0.7, 0.0, 0.0, 0.0, 0.4]])
    x = CentreOffsets(one_hot([[2, 2, 2, 0, 3, 3]]), heat[None], torch.zeros(2, 1, 6))
    r = CentreOffsetFusion(TABLE, nms_kernel=3, stuff_area=0)([x])[0]
    assert r.category.tolist() == [2, 3, 0] and r.source.tolist() == [0, 1, -1]
    assert r.score[:2].tolist() == pytest.approx([0.7, 0.4]) and 0 < float(r.score[2]) < 1


def test_labels_adapter_matches_logits(ops_backend):
    # under each backend of the argmax pass; rounded logits give ties (the first maximum wins, as argmax)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 8, 9, generator=g) * 2).round()
    heat, off = torch.rand(1, 8, 9, generator=g), torch.randn(2, 8, 9, generator=g)
    f = CentreOffsetFusion(TABLE, stuff_area=0, nms_kernel=3)
    a = f([CentreOffsets(logits, heat, off)])[0]
    b = f([CentreOffsets.from_labels(logits.argmax(0)[None], heat, off)])[0]
    assert a.equal(b, segmentation_only=True) and torch.isnan(b.score[~b.isthing]).all()
    assert not torch.isnan(a.score).any()


def test_non_contiguous_inputs_give_the_contiguous_results(ops_backend):
    """Logits, label maps, heatmaps and offsets stored transposed (views of another layout) fuse as their contiguous
    copies; a transposed label map raised a raw RuntimeError from a flat view before."""
    def transposed(t: torch.Tensor) -> torch.Tensor:  # same values, column-major storage
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)

    for seed in range(6):
        logits, heat, off, params = random_case(seed, 20, 28)
        f = CentreOffsetFusion(TABLE, **params)
        labels = logits.argmax(0)[None].to(torch.uint8 if seed % 2 else torch.int64)
        for make, sem in ((CentreOffsets, logits), (CentreOffsets.from_labels, labels)):
            expected = f([make(sem, heat, off)])[0]
            got = f([make(transposed(sem), transposed(heat), transposed(off))])[0]
            assert got.equal(expected)


def test_from_batch_splits_images():
    g = torch.Generator().manual_seed(4)
    logits, heat = torch.randn(2, 5, 6, 7, generator=g), torch.rand(2, 1, 6, 7, generator=g)
    off = torch.zeros(2, 2, 6, 7)
    xs = CentreOffsets.from_batch(logits, heat, off)
    assert len(xs) == 2 and torch.equal(xs[1].semantic, logits[1]) and torch.equal(xs[1].offsets, off[1])
    with pytest.raises(ValueError, match="batch"):
        CentreOffsets.from_batch(logits, heat[:1], off)


# ------------------------------------------------------------------------------------------ parity
def random_case(seed: int, h: int = 32, w: int = 48):
    """Blocky semantics, a quantised heatmap (flat maxima and tied peaks), float or integer offsets."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 5, 4, 6, generator=g)
    coarse[:, 2:] += torch.rand(1, generator=g) * 2  # vary the share of thing pixels
    logits = F.interpolate(coarse, size=(h, w), mode="nearest")[0] + 0.1 * torch.randn(5, h, w, generator=g)
    heat = F.interpolate(torch.rand(1, 1, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear")[0]
    heat = (heat * 10).round() / 10  # ties: flat maxima and equal peaks
    offsets = torch.randn(2, h, w, generator=g) * float(torch.randint(1, 12, (1,), generator=g))
    if seed % 3 == 0:
        offsets = offsets.round()  # exact distance ties
    rnd = np.random.default_rng(seed)
    params = dict(threshold=float(rnd.choice([0.1, 0.3, 0.6, -0.5])), nms_kernel=int(rnd.choice([1, 3, 5, 7])),
                  top_k=[None, 1, 2, 3, 5, 200][int(rnd.integers(6))], stuff_area=int(rnd.choice([0, 50, 200, 400])))
    return logits, heat, offsets, params


@pytest.mark.parametrize("flavor, cases", [("detectron2", 200), ("deeplab2", 100)])
def test_parity_with_panoptic_deeplab_on_random_inputs(flavor, cases):
    hit = {"no_centre": 0, "top_k_cut": 0, "several": 0}
    for seed in range(cases):
        logits, heat, offsets, p = random_case(seed)
        fusion = CentreOffsetFusion(TABLE, label_divisor=1000, flavor=flavor, **p)
        result = fusion([CentreOffsets(logits, heat, offsets)])[0]
        result.validate(TABLE)
        ours = fusion.encode(result, void_label=-1)
        ref = reference_panoptic(logits.argmax(0)[None], heat, offsets, THINGS, 1000, p["stuff_area"], -1,
                                 p["threshold"], p["nms_kernel"], p["top_k"], flavor)[0]
        assert torch.equal(ours, ref), (seed, p)
        k = int((result.source >= 0).sum())
        hit["no_centre"] += k == 0
        hit["several"] += k > 1
        hit["top_k_cut"] += p["top_k"] is not None and p["top_k"] <= 5 and k > 0
    assert min(hit.values()) >= cases // 20, hit  # the random cases reach every rule


# ------------------------------------------------------------------------------------------ invariants
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), kernel=st.sampled_from([1, 3, 5]), top_k=st.sampled_from([None, 2, 10]),
       flavor=st.sampled_from(["detectron2", "deeplab2"]))
def test_invariants(seed, kernel, top_k, flavor):
    logits, heat, offsets, _ = random_case(seed, 12, 16)
    r = CentreOffsetFusion(TABLE, nms_kernel=kernel, top_k=top_k, stuff_area=20, flavor=flavor)(
        [CentreOffsets(logits, heat, offsets)])[0]
    r.validate(TABLE)
    sem = logits.argmax(0)
    painted = r.segment_map > 0
    # a pixel keeps its semantic class when it is stuff; thing pixels land only in thing segments
    assert torch.equal(r.semantic_map()[painted & (sem < 2)], sem[painted & (sem < 2)])
    assert bool(r.isthing[r.segment_map[painted & (sem >= 2)].long() - 1].all())
    centred = r.source >= 0
    if centred.any() or flavor == "deeplab2":  # with a centre (or deeplab2) no thing pixel is void
        assert bool(painted[sem >= 2].all())
    assert int(centred.sum()) <= (top_k or 10 ** 9)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), k=st.integers(1, 8), chunk=st.integers(1, 64), seed=st.integers(0, 10 ** 6))
def test_nearest_centre_is_the_first_minimum_whatever_the_chunk(n, k, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.randint(-3, 4, (n, 2), generator=g).float()  # small integer grid: many exact ties
    centres = torch.randint(-3, 4, (k, 2), generator=g)
    got = nearest_centre(points, centres, chunk_elements=chunk)
    for i in range(n):
        d = [float(((points[i] - centres[j].float()) ** 2).sum()) for j in range(k)]
        assert int(got[i]) == d.index(min(d))


# ------------------------------------------------------------------------------------------ encode and errors
def test_encode_guards_overflow_and_divisor():
    r = CentreOffsetFusion(TABLE, nms_kernel=1, stuff_area=0)(
        [CentreOffsets(one_hot([[4, 4, 0]]), torch.tensor([[[1.0, 1.0, 0.0]]]), torch.zeros(2, 1, 3))])[0]
    assert encode_label_divisor(r, 1000).tolist() == [[4001, 4002, 0]]
    assert encode_label_divisor(r, 1000, dtype=torch.uint16).dtype == torch.uint16  # no void pixel: fits
    with pytest.raises(ValueError, match="uint16"):
        encode_label_divisor(r, 20000, dtype=torch.uint16)  # 4 * 20000 > 65535
    with pytest.raises(ValueError, match="int32"):
        encode_label_divisor(r, 2 ** 30, dtype=torch.int32)
    with pytest.raises(ValueError, match="larger label_divisor"):
        encode_label_divisor(r, 2)
    r2 = CentreOffsetFusion(TABLE, stuff_area=5)(
        [CentreOffsets(one_hot([[0, 0]]), torch.zeros(1, 1, 2), torch.zeros(2, 1, 2))])[0]
    with pytest.raises(ValueError, match="cannot hold -1"):
        encode_label_divisor(r2, 1000, dtype=torch.uint16)
    assert encode_label_divisor(r2, 1000, void_label=255, dtype=torch.uint16).tolist() == [[255, 255]]
    assert encode_label_divisor(r, 1000, table=TABLE).tolist() == [[103001, 103002, 1000]]


@pytest.mark.parametrize("make, match", [
    (lambda: CentreOffsets(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(2, 4, 4)), "from_labels"),
    (lambda: CentreOffsets(torch.zeros(5, 4, 4), torch.zeros(4, 4), torch.zeros(2, 4, 4)), r"heatmap\[None\]"),
    (lambda: CentreOffsets(torch.zeros(5, 4, 4), torch.zeros(1, 4, 4), torch.zeros(4, 4, 2)), "permute"),
    (lambda: CentreOffsets(torch.zeros(5, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4), torch.zeros(2, 4, 4)),
     "from_labels"),
    (lambda: CentreOffsets.from_labels(torch.full((4, 4), 7), torch.zeros(1, 4, 4), torch.zeros(2, 4, 4)),
     "contiguous ids"),
    (lambda: CentreOffsets.from_labels(torch.zeros(5, 4, 4), torch.zeros(1, 4, 4), torch.zeros(2, 4, 4)),
     "constructor"),
    (lambda: CentreOffsets(torch.zeros(5, 4, 4), torch.full((1, 4, 4), float("nan")), torch.zeros(2, 4, 4)),
     "nan_to_num"),
])
def test_input_errors_name_the_fix(make, match):
    with pytest.raises(ValueError, match=match):
        CentreOffsetFusion(TABLE)([make()])


@pytest.mark.parametrize("kw, match", [({"nms_kernel": 4}, "odd"), ({"top_k": 0}, "top_k"),
                                       ({"flavor": "mmdet"}, "flavor"), ({"stuff_area": -1}, "stuff_area"),
                                       ({"threshold": float("nan")}, "threshold"), ({"label_divisor": 0}, "divisor")])
def test_constructor_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        CentreOffsetFusion(TABLE, **kw)


def test_single_input_must_be_a_list():
    x = CentreOffsets(torch.zeros(5, 2, 2), torch.zeros(1, 2, 2), torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"fusion\(\[x\]\)"):
        CentreOffsetFusion(TABLE)(x)


def test_top_k_above_the_pixel_count_keeps_every_peak():
    # detectron2's torch.topk raises here (k out of range); fewer peaks than top_k keeps them all
    heat = torch.zeros(8, 8)
    heat[1, 1] = heat[6, 6] = 1.0
    labels = [[2] * 8] * 8
    assert fuse(labels, heat.tolist(), nms_kernel=3, top_k=200).unique().tolist() == [2001, 2002]


def test_non_finite_logits_are_refused_in_the_argmax_pass():
    logits = one_hot([[2, 2, 0]])
    logits[0, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="nan_to_num"):
        CentreOffsetFusion(TABLE)([CentreOffsets(logits, torch.zeros(1, 1, 3), torch.zeros(2, 1, 3))])


# ------------------------------------------------------------------------------------------ end to end
def test_end_to_end_recovers_a_synthetic_ground_truth():
    """Perfect outputs made from a synthetic scene's ground truth (one-hot logits, a one-pixel heatmap peak per
    instance, offsets pointing at it) fuse back to that ground truth: PQ 1 on every class present."""
    from panoptic.data import generate_scene
    from panoptic.evaluation import PanopticQuality

    for seed in range(3):
        scene = generate_scene(np.random.default_rng(seed), (48, 64))
        gt, table = scene.panoptic, scene.table
        sem = gt.semantic_map(void=0)
        h, w = gt.image_size
        heat, offsets = torch.zeros(1, h, w), torch.zeros(2, h, w)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        for s in range(gt.num_segments):
            mask = gt.segment_map == s + 1
            if not gt.isthing[s]:
                continue
            py, px = ys[mask], xs[mask]
            cy, cx = int(py[len(py) // 2]), int(px[len(px) // 2])  # a pixel of the segment
            heat[0, cy, cx] = 1.0
            offsets[0][mask] = (cy - py).float()
            offsets[1][mask] = (cx - px).float()
        fusion = CentreOffsetFusion(table, nms_kernel=1, stuff_area=0)
        pred = fusion([CentreOffsets(F.one_hot(sem, table.num_classes).permute(2, 0, 1).float(), heat, offsets)])[0]
        pred.validate(table)
        metric = PanopticQuality(table)
        metric.update(gt, pred)
        assert metric.compute()["All"]["pq"] == pytest.approx(1.0), seed


def test_centre_benchmark_runs_and_checks_parity(tmp_path, monkeypatch, capsys):
    """``benchmarks/fusion_speed.py --family centre`` on one tiny scene: it asserts equal maps and writes its JSON."""
    import argparse
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fusion_speed.py"
    spec = importlib.util.spec_from_file_location("fusion_speed_centre", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "CENTRE_SCENES", {"tiny": (64, 96, "coco", 6, 5, 200, 100)})
    out = tmp_path / "centre.json"
    args = argparse.Namespace(quick=False, repeats=1, threads=None, seed=0, json=out, threads_only=False, load=0)
    assert bench.centre_family(args) == 0
    row = json.loads(out.read_text())["tiny"]
    assert row["reference_ms"] > 0 and row["ours_labels_ms"] > 0 and row["speedup"] > 0
    assert "| tiny |" in capsys.readouterr().out
    # --threads-only --load 1: default vs 1 thread of our calls, beside one busy process
    args.threads_only, args.load = True, 1
    assert bench.centre_family(args) == 0
    threads = json.loads(out.read_text())["threads"]
    assert threads["load_processes"] == 1
    for phase in ("quiet", "load"):
        r = threads["tiny"][phase]
        assert r["ours_labels_1t_ms"] > 0 and r["ours_logits_default_ms"] > 0 and "reference_1t_ms" not in r
    assert "default / 1 thread" in capsys.readouterr().out
