"""panoptic.heads._roi_align: torchvision's RoIAlign output, and its gradient from the separable form."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic.heads._roi_align import (
    MultiScaleRoIAlign,
    _SeparableRoIAlign,
    axis_weights,
    roi_align,
    separable_backward,
    separable_pays,
)


def _random_case(gen: torch.Generator, t: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], float, int, bool]:
    """A map, RoIs (some partly or wholly outside, some inverted or tiny), and RoIAlign's arguments."""
    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (), generator=gen))

    n, c, h, w = randint(1, 4), randint(1, 5), randint(1, 20), randint(1, 20)
    k = randint(1, 14)
    size = (randint(1, 8), randint(1, 8))
    scale = (1.0, 0.5, 0.25, 0.125)[t % 4]
    sampling = (0, 1, 2, 3, -1)[(t // 4) % 5]
    aligned = t % 3 == 0
    extent = torch.tensor([w, h], dtype=torch.float32) / scale
    xy = torch.rand(k, 2, generator=gen) * extent * 1.4 - 3.0
    wh = torch.rand(k, 2, generator=gen) * extent * (0.01 + torch.rand(k, 1, generator=gen))
    wh[torch.rand(k, generator=gen) < 0.1] *= -0.2  # inverted boxes: torchvision clamps (or, aligned, not)
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=gen).float(), xy, xy + wh], dim=1)
    x = torch.randn(n, c, h, w, generator=gen)
    return x, rois, size, scale, sampling, aligned


def test_gradient_equals_torchvisions_on_random_rois() -> None:
    gen = torch.Generator().manual_seed(0)
    for t in range(300):
        x, rois, size, scale, sampling, aligned = _random_case(gen, t)
        x.requires_grad_(True)
        out = torchvision.ops.roi_align(x, rois, size, scale, sampling, aligned)
        g = torch.randn(out.shape, generator=gen)
        (expected,) = torch.autograd.grad(out, x, g)
        got = separable_backward(g, rois, x.shape, scale, sampling, aligned)
        assert got.shape == expected.shape
        tol = 1e-5 * max(float(expected.abs().max()), 1.0)
        assert torch.allclose(got, expected, rtol=0, atol=tol), (t, float((got - expected).abs().max()))


def test_output_is_torchvisions_bit_for_bit_on_both_routes() -> None:
    gen = torch.Generator().manual_seed(1)
    for t in range(100):
        x, rois, size, scale, sampling, aligned = _random_case(gen, t)
        expected = torchvision.ops.roi_align(x, rois, size, scale, sampling, aligned)
        assert torch.equal(roi_align(x, rois, size, scale, sampling, aligned), expected)
        assert torch.equal(_SeparableRoIAlign.apply(x.requires_grad_(True), rois, size, scale, sampling, aligned),
                           expected)


def test_gradcheck_in_double() -> None:
    gen = torch.Generator().manual_seed(2)
    for t in range(6):
        x, rois, size, scale, sampling, aligned = _random_case(gen, t)
        x, r = x.double().requires_grad_(True), rois.double()
        assert torch.autograd.gradcheck(
            lambda inp, r=r, s=size, sc=scale, sr=sampling, al=aligned:
            _SeparableRoIAlign.apply(inp, r, s, sc, sr, al), (x,), eps=1e-6, atol=1e-5)


def test_hand_computed_weights_at_the_map_edges() -> None:
    # rows 0..3; one bin from y=3 to y=5 (scale 1, not aligned), one sample at 3 + 0.5 * 2 = 4.0 = H: inside
    # (torchvision drops samples only beyond H), clamped onto the last row
    w = axis_weights(torch.tensor([3.0]), torch.tensor([2.0]), 1, torch.tensor([1]), 4)
    assert w.tolist() == [[[0.0, 0.0, 0.0, 1.0]]]
    # two samples at 3.5 (last row, weight 1) and 4.5 (beyond H: nothing), each a half
    w = axis_weights(torch.tensor([3.0]), torch.tensor([2.0]), 1, torch.tensor([2]), 4)
    assert w.tolist() == [[[0.0, 0.0, 0.0, 0.5]]]
    # below -1 drops, between -1 and 0 clamps onto row 0: samples at -1.25 and -0.75
    w = axis_weights(torch.tensor([-1.5]), torch.tensor([1.0]), 1, torch.tensor([2]), 4)
    assert w.tolist() == [[[0.5, 0.0, 0.0, 0.0]]]
    # two bins, one sample each at 0.75 and 2.25: 0.25 / 0.75 on rows 0, 1 and rows 2, 3
    w = axis_weights(torch.tensor([0.0]), torch.tensor([3.0]), 2, torch.tensor([1]), 4)
    assert w.tolist() == [[[0.25, 0.75, 0.0, 0.0], [0.0, 0.0, 0.75, 0.25]]]


@settings(max_examples=60, deadline=None)
@given(start=st.floats(-30, 30), length=st.floats(0.0, 40), bins=st.integers(1, 6), grid=st.integers(0, 4),
       size=st.integers(1, 24))
def test_each_bin_weighs_at_most_one_and_only_its_samples(start: float, length: float, bins: int, grid: int,
                                                          size: int) -> None:
    w = axis_weights(torch.tensor([start]), torch.tensor([length]), bins, torch.tensor([grid]), size)
    assert w.shape == (1, bins, size)
    assert bool((w >= 0).all())
    assert bool((w.sum(-1) <= 1 + 1e-6).all())
    inside = start >= 0 and start + length <= size - 1 and grid > 0
    if inside:  # every sample inside the map: each bin's weights sum to one
        assert torch.allclose(w.sum(-1), torch.ones(1, bins))


def test_routing_separable_only_where_it_pays() -> None:
    rois = torch.tensor([[0.0, 2.0, 2.0, 90.0, 100.0]])
    small = torch.rand(1, 8, 32, 32, requires_grad=True)
    assert type(roi_align(small, rois, 7, 0.25, 2).grad_fn).__name__ == "_SeparableRoIAlignBackward"
    large = torch.rand(1, 8, 256, 256, requires_grad=True)
    assert type(roi_align(large, rois, 7, 0.25, 2).grad_fn).__name__ != "_SeparableRoIAlignBackward"
    with torch.no_grad():
        assert roi_align(small, rois, 7, 0.25, 2).grad_fn is None
    assert roi_align(small, rois[:0], 7, 0.25, 2).shape == (0, 8, 7, 7)
    assert separable_pays(32, 32, 7, 4.0) and not separable_pays(256, 256, 7, 4.0)


def test_list_of_boxes_and_images_without_rois() -> None:
    x = torch.randn(3, 4, 16, 16, requires_grad=True)
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 40.0]]), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 60.0, 60.0],
                                                                                       [5.0, 5.0, 9.0, 7.0]])]
    out = roi_align(x, boxes, (5, 6), 0.25, 2, aligned=True)
    expected = torchvision.ops.roi_align(x, boxes, (5, 6), 0.25, 2, aligned=True)
    assert torch.equal(out, expected)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(expected, x, g)
    assert torch.allclose(got, want, atol=1e-5)
    assert bool((got[1] == 0).all())


@pytest.mark.parametrize("image_sizes", [[(128, 128)], [(128, 96), (100, 128)], [(512, 512)]])
def test_multiscale_equals_torchvisions(image_sizes: list[tuple[int, int]]) -> None:
    gen = torch.Generator().manual_seed(3)
    hmax, wmax = max(s[0] for s in image_sizes), max(s[1] for s in image_sizes)
    names = ["p2", "p3", "p4", "p5"]
    feats = {f"p{lv}": torch.randn(len(image_sizes), 6, hmax >> lv, wmax >> lv, generator=gen) for lv in range(2, 6)}
    boxes = []
    for h, w in image_sizes:
        xy = torch.rand(40, 2, generator=gen) * torch.tensor([w, h]) * 0.8
        wh = torch.rand(40, 2, generator=gen) ** 2 * torch.tensor([w, h]) + 1
        boxes.append(torch.cat([xy, xy + wh], 1))
    ours, theirs = MultiScaleRoIAlign(names, 7, 2), torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    out = ours(leaves, boxes, image_sizes)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    ref = theirs(ref_leaves, boxes, image_sizes)
    assert torch.equal(out, ref)
    assert ours.scales == theirs.scales
    g = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, list(leaves.values()), g, allow_unused=True)
    want = torch.autograd.grad(ref, list(ref_leaves.values()), g, allow_unused=True)
    for a, b in zip(got, want):
        if a is None or b is None:
            assert a is None or bool((a == 0).all())
            continue
        assert torch.allclose(a, b, atol=1e-5 * max(float(b.abs().max()), 1.0))
