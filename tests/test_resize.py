"""The bilinear resize of the query fusions: bit-identical to ``F.interpolate``, alone and fused with the pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import panoptic.ops
from panoptic._ops.queries import assign_queries
from panoptic._ops.resize import native_resize_mode, resize_bilinear
from panoptic._ops.switch import native_kernels

NATIVE = native_kernels() is not None
REQUIRE_NATIVE = os.environ.get("PANOPTIC_REQUIRE_NATIVE") == "1"


def _reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def _random_case(g: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    n = int(torch.randint(1, 7, (), generator=g))
    h, w = (int(v) for v in torch.randint(1, 70, (2,), generator=g))
    size = (int(torch.randint(1, 230, (), generator=g)), int(torch.randint(1, 230, (), generator=g)))
    return torch.randn(n, h, w, generator=g) * 3, size


def test_hand_computed() -> None:
    x = torch.tensor([[[0.0, 4.0], [8.0, 12.0]]])  # 2x2 -> 2x4: columns at source x = -0.25 (clamped), 0.25, 0.75, 1.25
    assert resize_bilinear(x, (2, 4)).tolist() == [[[0.0, 1.0, 3.0, 4.0], [8.0, 9.0, 11.0, 12.0]]]


@pytest.mark.skipif(not NATIVE and not REQUIRE_NATIVE, reason="C kernels not built")
def test_native_path_is_taken_where_torch_uses_its_generic_kernel() -> None:
    big = torch.zeros(2, 30, 40)
    assert native_resize_mode(big, (200, 304)) in (0, 1)  # this machine's torch arithmetic was reproduced
    assert native_resize_mode(big, (60, 60)) is None  # H + W <= 128: torch's separable route
    assert native_resize_mode(big.double(), (200, 304)) is None
    with panoptic.ops.backend("torch"):
        assert native_resize_mode(big, (200, 304)) is None
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert native_resize_mode(torch.zeros(3, 30, 40), (200, 304)) is None  # 3 channels on 1 thread: separable
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.skipif(not NATIVE and not REQUIRE_NATIVE, reason="C kernels not built")
def test_the_baseline_build_of_torch_is_reproduced_too() -> None:
    """torch's baseline CPU kernels (``ATEN_CPU_CAPABILITY=default``, as on a CPU without AVX2) do not contract
    into FMAs: the C resize must pick its other arithmetic there, and still equal ``F.interpolate``."""
    code = ("import torch, torch.nn.functional as F\n"
            "from panoptic._ops.resize import _torch_contraction, resize_bilinear\n"
            "x = torch.randn(5, 41, 37, generator=torch.Generator().manual_seed(0))\n"
            "ref = F.interpolate(x[None], size=(150, 230), mode='bilinear', align_corners=False)[0]\n"
            "print(_torch_contraction(), torch.equal(resize_bilinear(x, (150, 230)), ref))\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0", "True"]


@pytest.mark.parametrize("threads", [1, 2])
def test_equals_interpolate_bit_for_bit(threads: int) -> None:
    g = torch.Generator().manual_seed(threads)
    torch_threads = torch.get_num_threads()
    native = 0
    try:
        torch.set_num_threads(threads)
        for _ in range(200):
            x, size = _random_case(g)
            native += native_resize_mode(x, size) is not None
            assert torch.equal(resize_bilinear(x, size), _reference(x, size)), (tuple(x.shape), size)
    finally:
        torch.set_num_threads(torch_threads)
    assert native > 100 or not (NATIVE or REQUIRE_NATIVE)  # most cases ran the C kernel


def test_large_upsampling_as_the_query_fusions_use_it() -> None:
    g = torch.Generator().manual_seed(5)
    for src, size in [((4, 96, 96), (400, 608)), ((3, 64, 128), (512, 1024)), ((2, 77, 51), (385, 129))]:
        x = torch.rand(*src, generator=g)
        assert torch.equal(resize_bilinear(x, size), _reference(x, size))


def _assign_spec(prob: torch.Tensor, scores: torch.Tensor, thr: float, weighted: bool,
                 size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    up = _reference(prob, size)
    w = up * scores.view(-1, 1, 1)
    owner = w.argmax(0)
    fg = (w if weighted else up) >= thr
    return owner, fg.sum((1, 2)), torch.bincount(owner.reshape(-1), minlength=len(scores)), fg.gather(0, owner[None])[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_resize_and_assignment_equal_the_two_steps(weighted: bool) -> None:
    g = torch.Generator().manual_seed(int(weighted))
    fused = 0
    for i in range(120):
        n = int(torch.randint(1, 9, (), generator=g))
        h, w = (int(v) for v in torch.randint(2, 40, (2,), generator=g))
        size = (int(torch.randint(40, 160, (), generator=g)), int(torch.randint(90, 200, (), generator=g)))
        prob = torch.rand(n, h, w, generator=g)
        if i % 3 == 0:  # coarse values: ties between queries and values exactly at the threshold
            prob = torch.randint(0, 5, (n, h, w), generator=g) / 4.0
        scores = torch.randint(1, 5, (n,), generator=g) / 4.0 if i % 2 else torch.rand(n, generator=g)
        thr = [0.5, 0.25, 0.7][i % 3]
        fused += native_resize_mode(prob, size) is not None
        got = assign_queries(prob.clone(), scores, thr, weighted, size=size)
        owner, fg_area, region, owner_fg = _assign_spec(prob, scores, thr, weighted, size)
        assert torch.equal(got.owner, owner)
        assert torch.equal(got.foreground_area, fg_area)
        assert torch.equal(got.region_area, region)
        assert torch.equal(got.owner_foreground, owner_fg)
        with panoptic.ops.backend("torch"):
            spec = assign_queries(prob.clone(), scores, thr, weighted, size=size)
        assert all(torch.equal(a, b) for a, b in zip(got, spec, strict=True))
    assert fused > 80 or not (NATIVE or REQUIRE_NATIVE)


def test_fused_pass_on_two_threads_equals_one() -> None:
    g = torch.Generator().manual_seed(9)
    prob, scores = torch.rand(7, 48, 64, generator=g), torch.rand(7, generator=g)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = assign_queries(prob.clone(), scores, 0.5, True, size=(300, 500))
        torch.set_num_threads(2)
        two = assign_queries(prob.clone(), scores, 0.5, True, size=(300, 500))
    finally:
        torch.set_num_threads(torch_threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_a_subset_is_resized_as_its_whole_batch(backend: str) -> None:
    """torch resizes 3 maps on one thread by another route (last-bit differences): kept masks are resized as the
    reference resizes all of them."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 37, 45, generator=g)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with panoptic.ops.backend(backend):  # type: ignore[arg-type]
            for batch, keep in [(x, [0, 2, 5]), (x[:3], [0, 2]), (x[:3], [1])]:
                whole = _reference(batch, (200, 301))
                sub = resize_bilinear(batch[keep], (200, 301), channels=len(batch))
                assert torch.equal(sub, whole[keep])
            assert not torch.equal(_reference(x[[0, 2, 5]], (200, 301)), _reference(x, (200, 301))[[0, 2, 5]])
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_resized_logits_pass_equals_the_two_steps(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits (Mask2Former's rule): the C path resizes row chunks and takes torch's sigmoid of each chunk."""
    import panoptic._ops.queries as ops_queries

    monkeypatch.setattr(ops_queries, "NATIVE_CHUNK_BYTES", 40_000)  # chunks of a few rows, a short last one
    g = torch.Generator().manual_seed(11)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for _ in range(40):
            n = int(torch.randint(1, 8, (), generator=g))
            logits = torch.randn(n, int(torch.randint(3, 30, (), generator=g)), 24, generator=g) * 4
            scores = torch.rand(n, generator=g)
            size = (int(torch.randint(50, 300, (), generator=g)), 150)
            prob = _reference(logits, size).sigmoid()
            w = prob * scores.view(-1, 1, 1)
            owner = w.argmax(0)
            got = assign_queries(logits.clone(), scores, 0.5, False, sigmoid=True, size=size)
            assert torch.equal(got.owner, owner)
            assert torch.equal(got.foreground_area, (prob >= 0.5).sum((1, 2)))
            assert torch.equal(got.owner_foreground, (prob >= 0.5).gather(0, owner[None])[0])
            assert torch.equal(got.region_area, torch.bincount(owner.reshape(-1), minlength=n))
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.skipif(not NATIVE and not REQUIRE_NATIVE, reason="C kernels not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_resize_each_equals_one_interpolate_per_map(threads: int) -> None:
    """300 random ROI-mask pastes (28x28 and other sources, outputs 1..300 a side, so both of torch's routes),
    each map resized on its own: bit for bit ``F.interpolate``, with most maps in the one C call."""
    from panoptic._ops.resize import resize_each

    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(threads)
    try:
        torch.set_num_threads(threads)
        native_maps = 0
        for _ in range(30):
            n = int(torch.randint(1, 20, (), generator=g))
            other = tuple(int(v) for v in torch.randint(1, 40, (2,), generator=g))
            h, w = (28, 28) if torch.rand((), generator=g) < 0.5 else other
            x = torch.randn(n, h, w, generator=g) * 4
            sizes = [tuple(int(v) for v in torch.randint(1, 300, (2,), generator=g)) for _ in range(n)]
            out = resize_each(x, sizes)
            for i, size in enumerate(sizes):
                ref = F.interpolate(x[i][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
                assert out[i].shape == size and torch.equal(out[i], ref), (h, w, size)
                native_maps += size[0] + size[1] > 128
            with panoptic.ops.backend("torch"):  # the specification gives the same maps
                assert all(torch.equal(a, b) for a, b in zip(out, resize_each(x, sizes), strict=True))
        assert native_maps > 150
    finally:
        torch.set_num_threads(before)


def test_resize_each_rejects_a_size_per_map_mismatch() -> None:
    from panoptic._ops.resize import resize_each

    with pytest.raises(ValueError, match="one output size of at least"):
        resize_each(torch.zeros(2, 3, 3), [(4, 4)])
    with pytest.raises(ValueError, match="one output size of at least"):
        resize_each(torch.zeros(1, 3, 3), [(0, 4)])


def test_pasted_masks_keep_their_gradient_and_equal_the_no_grad_paste() -> None:
    """Training pastes with torch (differentiable); inference pastes the same values through resize_each."""
    from panoptic.fusion.paste import box_regions, paste_masks

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 28, 28, generator=g) * 3).requires_grad_()
    boxes = torch.tensor([[0.0, 0.0, 200.0, 150.0], [10.0, 5.0, 30.0, 20.0], [50.0, 60.0, 49.0, 80.0],
                          [5.0, 5.0, 300.0, 250.0], [399.0, 0.0, 420.0, 10.0], [1.0, 2.0, 3.0, 4.0]])
    regions = box_regions(boxes, (240, 400))
    trained = paste_masks(logits, regions)
    assert trained[0].requires_grad
    sum(t.sum() for t in trained).backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)
    with torch.no_grad():
        fused = paste_masks(logits, regions)
    assert [tuple(t.shape) for t in fused] == [tuple(t.shape) for t in trained]
    assert all(torch.equal(a.detach(), b) for a, b in zip(trained, fused, strict=True))


@pytest.mark.skipif(not NATIVE and not REQUIRE_NATIVE, reason="C kernels not built")
def test_resize_each_kernel_checks_its_buffers() -> None:
    import numpy as np

    k = native_kernels()
    src = np.zeros((2, 3, 3), np.float32)
    ok = [np.zeros((100, 60), np.float32), None]
    assert k.bilinear_resize_each(src, ok, 2, 3, 3, 1) is True
    with pytest.raises(ValueError, match="dsts hold n entries"):
        k.bilinear_resize_each(src, ok[:1], 2, 3, 3, 1)
    with pytest.raises(ValueError, match=r"dsts\[1\] must be a writable contiguous \(H, W\) float32"):
        k.bilinear_resize_each(src, [ok[0], np.zeros((100, 60), np.float64)], 2, 3, 3, 1)
    with pytest.raises(ValueError, match=r"dsts\[0\]"):
        k.bilinear_resize_each(src, [np.zeros(60, np.float32), None], 2, 3, 3, 1)
