"""The C kernels of the fusion primitives (``panoptic.fusion._kernels``) give exactly the torch specification's
results (``panoptic.ops.backend("native")`` against ``backend("torch")``), key for key.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import require_native, tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import Instances, ops
from panoptic._ops import count_keys, first_argmax_keys, overlap_flags, relabel_keys, switch
from panoptic.fusion import HeuristicFusion, UPSNetFusion

require_native("panoptic.fusion._kernels")


@st.composite
def logits(draw, max_side: int = 24):
    c = draw(st.integers(1, 7))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(c, h, w, generator=g) * 2
    if draw(st.booleans()):  # small integers: ties everywhere, and -0.0 next to 0.0
        x = x.round()
        x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=g) < 0.5, -0.0, 0.0)
    return x


@settings(max_examples=80, deadline=None)
@given(x=logits(), data=st.data())
def test_first_argmax_keys_native_equals_torch(x, data):
    k = data.draw(st.integers(0, x.shape[0]))
    native = torch.full(x.shape[1:], -7, dtype=torch.int32)
    with ops.backend("native"):
        first_argmax_keys(x, k, native)
    ref = torch.full(x.shape[1:], -7, dtype=torch.int32)
    with ops.backend("torch"):
        first_argmax_keys(x, k, ref)
    assert torch.equal(native, ref)
    if k == x.shape[0]:
        assert torch.equal(native.long(), x.argmax(0))  # first maximum on ties, like torch.argmax


@st.composite
def upsnet_cases(draw):
    nst, nth = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    table = tiny_table(nst, nth)
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    n = draw(st.integers(0, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sem = torch.randn(nst + nth, h, w, generator=g) * 3
    masks = torch.randn(n, 4, 4, generator=g) * 3
    if draw(st.booleans()):
        sem, masks = sem.round(), masks.round()
    x1, y1 = torch.rand(n, generator=g) * w, torch.rand(n, generator=g) * h
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=g) * w, y1 + torch.rand(n, generator=g) * h], 1)
    inst = Instances(boxes, 0.61 + 0.39 * torch.rand(n, generator=g), torch.randint(0, nth, (n,), generator=g), masks)
    fusion = UPSNetFusion(table, unknown=draw(st.booleans()),
                          class_assignment=draw(st.sampled_from(["heuristic", "detector", "semantic"])),
                          stuff_area_limit=draw(st.sampled_from([0, 5])))
    return fusion, sem, inst


def _run_both(fn):
    with ops.backend("native"):
        native = fn()
    with ops.backend("torch"):
        ref = fn()
    return native, ref


@settings(max_examples=120, deadline=None)
@given(case=upsnet_cases())
def test_upsnet_native_equals_torch(case):
    fusion, sem, inst = case
    native, ref = _run_both(lambda: (fusion.panoptic_argmax(sem, inst), fusion(sem[None], [inst])[0]))
    assert torch.equal(native[0], ref[0])
    a, b = native[1], ref[1]
    assert torch.equal(a.segment_map, b.segment_map) and torch.equal(a.unknown_mask, b.unknown_mask)
    assert torch.equal(a.category, b.category) and torch.equal(a.area, b.area)
    assert torch.equal(a.score.nan_to_num(-1), b.score.nan_to_num(-1))


@settings(max_examples=60, deadline=None)
@given(case=upsnet_cases(), big=st.booleans())
def test_upsnet_keys_count_their_keys_in_the_pass(case, big):
    from panoptic.fusion.pruning import local_mask_logits

    fusion, sem, inst = case
    if big:  # several blocks and row chunks, two threads sharing the count table
        sem = sem.repeat(1, 40, 60)
        inst = Instances(inst.boxes * 50, inst.scores, inst.labels, inst.mask_logits)
    size = (int(sem.shape[1]), int(sem.shape[2]))
    local = local_mask_logits(inst, size)
    for backend in ("native", "torch"):
        for pairs in (False, True):
            with ops.backend(backend):
                keys, counts, _, _ = fusion._keys(sem, inst, local, pairs and len(inst) > 0, True, False)
            q = counts.numel()
            assert torch.equal(counts, torch.bincount(keys.reshape(-1).long(), minlength=q))
            nst = fusion.table.num_stuff
            assert q == nst + len(inst) * (nst + 1 if pairs and len(inst) else 1) + 1


def test_upsnet_keys_reject_a_counts_table_of_the_wrong_size():
    from panoptic._ops import upsnet_keys

    sem, out = torch.randn(3, 4, 5), torch.empty(4, 5, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"counts must be a \(3,\) int64"):  # 2 stuff keys and unknown
        upsnet_keys(sem, [], [], [], [], 2, False, True, out, counts=torch.zeros(4, dtype=torch.int64))
    counts = torch.full((3,), 99, dtype=torch.int64)  # overwritten, not added to
    upsnet_keys(sem, [], [], [], [], 2, False, True, out, counts=counts)
    assert torch.equal(counts, torch.bincount(out.reshape(-1).long(), minlength=3)) and int(counts.sum()) == 20


@pytest.mark.parametrize("seed", range(4))
def test_upsnet_torch_path_in_several_row_bands_equals_native_and_dense(seed):
    from panoptic._ops.rows import row_bands

    g = torch.Generator().manual_seed(seed)
    table = tiny_table(3, 3)
    h, w = 300, 700  # 210k pixels: the torch pass runs in two row bands
    assert len(row_bands(torch.empty(1, h, w))) == 2
    sem = (torch.randn(6, h, w, generator=g) * 3).round()  # ties on every channel
    n = 14
    x1, y1 = torch.rand(n, generator=g) * w, torch.rand(n, generator=g) * h
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=g) * 300, y1 + torch.rand(n, generator=g) * 250], 1)
    inst = Instances(boxes, 0.61 + 0.39 * torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g),
                     (torch.randn(n, 7, 7, generator=g) * 3).round())
    fusion = UPSNetFusion(table, class_assignment="heuristic" if seed % 2 else "semantic")
    native, ref = _run_both(lambda: (fusion.panoptic_argmax(sem, inst), fusion(sem[None], [inst])[0]))
    assert torch.equal(native[0], ref[0])
    assert torch.equal(ref[0], fusion.panoptic_logits(sem, inst).argmax(0))
    assert torch.equal(native[1].segment_map, ref[1].segment_map)
    assert torch.equal(native[1].unknown_mask, ref[1].unknown_mask)
    # stuff scores come from samples each band takes (stride 2 here; a band of 187 rows ends between samples)
    assert torch.equal(native[1].score.nan_to_num(-1), ref[1].score.nan_to_num(-1))
    heuristic = HeuristicFusion(table)
    hn, hr = _run_both(lambda: heuristic(sem[None], [inst])[0])
    assert torch.equal(hn.segment_map, hr.segment_map) and torch.equal(hn.score.nan_to_num(-1), hr.score.nan_to_num(-1))
    bad = sem.clone()
    bad[2, h - 1, w - 1] = float("-inf")  # in the last band only
    with ops.backend("torch"), pytest.raises(ValueError, match="NaN or inf"):
        fusion(bad[None], [inst])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 9), stride=st.integers(1, 6), cuts=st.lists(st.integers(0, 40)))
def test_sample_grid_band_by_band_equals_the_whole_grid(h, w, stride, cuts):
    from panoptic._ops.argmax import sample_grid

    x = torch.randn(3, h, w)
    whole = torch.full((3, -(-h // stride), -(-w // stride)), float("nan"))
    sample_grid(x, whole, stride)
    assert torch.equal(whole, x[:, ::stride, ::stride])
    bands = torch.full_like(whole, float("nan"))
    edges = sorted({0, h, *(c for c in cuts if c < h)})
    for r0, r1 in itertools.pairwise(edges):
        sample_grid(x, bands, stride, r0, r1)
    assert torch.equal(bands, whole)  # every sample written once, none missed


def test_upsnet_native_path_is_taken_by_two_threads_sharing_a_row_counter(monkeypatch):
    table = tiny_table(2, 2)
    sem = torch.randn(4, 64, 16)
    inst = Instances(torch.tensor([[1.0, 2.0, 12.0, 50.0]]), torch.tensor([0.9]), torch.tensor([1]),
                     torch.randn(1, 6, 6))
    calls = []
    real = switch._built

    class Spy:
        def __getattr__(self, name):
            fn = getattr(real, name)
            if name != "upsnet_keys":  # only the pass is recorded (not the pruning's overlap test)
                return fn

            def wrapped(*args):
                calls.append((name, args[6], args[7], args[-3], args[-2], args[-1]))  # rows, counter, chunk, counts
                return fn(*args)
            return wrapped

    monkeypatch.setattr(switch, "_built", Spy())  # a spy on the built module, not a path switch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    fused = UPSNetFusion(table)(sem[None], [inst])[0]
    assert [c[:3] for c in calls] == [("upsnet_keys", 0, 64)] * 2
    counter, chunk = calls[0][3], calls[0][4]
    assert calls[1][3] is counter and chunk >= 4 and int(counter[0]) >= 64  # every chunk was taken
    counts = calls[0][5]
    assert calls[1][5] is counts and int(counts.sum()) == 64 * 16  # both threads added their pixels to one table
    monkeypatch.setattr(switch, "_built", real)
    with ops.backend("torch"):
        ref = UPSNetFusion(table)(sem[None], [inst])[0]
    assert torch.equal(fused.segment_map, ref.segment_map)


def test_chunked_rows_cover_every_row_once():
    import numpy as np

    from panoptic.fusion import _kernels

    x = torch.randn(3, 37, 5)
    ref = torch.empty(37, 5, dtype=torch.int32)
    _kernels.first_argmax_keys(x.numpy(), ref.numpy(), 3, 37, 5, 3, 0, 37)
    out = torch.full((37, 5), -1, dtype=torch.int32)
    counter = np.zeros(1, dtype=np.int64)
    for _ in range(3):  # three "threads" in turn: the later ones find chunks left or none
        _kernels.first_argmax_keys(x.numpy(), out.numpy(), 3, 37, 5, 3, 0, 37, None, 1, counter, 4)
    assert torch.equal(out, ref) and torch.equal(ref.long(), x.argmax(0)) and int(counter[0]) >= 37
    with pytest.raises(ValueError, match="counter"):
        _kernels.first_argmax_keys(x.numpy(), out.numpy(), 3, 37, 5, 3, 0, 37, None, 1, np.zeros(2, np.int64), 4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_native_passes_reject_non_finite_logits(bad):
    table = tiny_table(2, 2)
    sem = torch.randn(1, 4, 40, 30)
    sem[0, 3, 37, 29] = bad  # last channel, last rows: the second thread's range
    inst = Instances(torch.tensor([[1.0, 2.0, 12.0, 20.0]]), torch.tensor([0.9]), torch.tensor([1]),
                     torch.randn(1, 6, 6))
    for fusion in (UPSNetFusion(table), HeuristicFusion(table)):
        for instances in (inst, Instances.empty()):
            with pytest.raises(ValueError, match="NaN or inf"):
                fusion(sem, [instances])


def test_non_contiguous_or_float64_logits_take_the_torch_path():
    table = tiny_table(2, 2)
    base = torch.randn(1, 4, 12, 20)
    fusion = UPSNetFusion(table)
    ref = fusion(base, [Instances.empty()])[0].segment_map
    strided = torch.randn(1, 4, 20, 12).transpose(2, 3)
    strided.copy_(base)
    assert not strided.is_contiguous()
    assert torch.equal(fusion(strided, [Instances.empty()])[0].segment_map, ref)
    from panoptic._ops.rows import as_native

    assert as_native(base[0].double()) is None and as_native(strided[0]) is None and as_native(base[0]) is not None


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 12), threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_overlap_flags_native_equals_torch(seed, n, threshold):
    from panoptic.fusion import pruning
    from panoptic.fusion.base import scratch

    g = torch.Generator().manual_seed(seed)
    h, w = 30, 40
    x1, y1 = torch.rand(n, generator=g) * (w + 4) - 2, torch.rand(n, generator=g) * (h + 4) - 2
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=g) * 25, y1 + torch.rand(n, generator=g) * 20], 1)
    masks = torch.randn(n, 7, 7, generator=g).round()  # exact zeros: "> 0" is strict
    labels = torch.randint(0, 3, (n,), generator=g)
    local = pruning.local_mask_logits(Instances(boxes, torch.ones(n), labels, masks), (h, w))
    with ops.backend("native"):
        native = overlap_flags(local.logits, local.regions.paste, labels, (h, w), threshold)
    with ops.backend("torch"):
        ref = overlap_flags(local.logits, local.regions.paste, labels, (h, w), threshold)
    assert native == ref
    if n:
        canvas = scratch("prune.native_canvas", (8, h, w), torch.uint8, torch.device("cpu"), zero=True)
        assert not canvas.any()  # left all zero for the next image


def test_rows_wider_than_a_block():
    # 9000 px rows: one row a block, work buffers sized by the row (BLOCK is 8192 px).
    table = tiny_table(2, 2)
    g = torch.Generator().manual_seed(5)
    sem = torch.randn(1, 4, 20, 9000, generator=g).round()
    inst = Instances(torch.tensor([[10.0, 1.0, 8990.0, 18.0], [4000.0, 0.0, 8999.0, 19.0]]), torch.tensor([0.9, 0.8]),
                     torch.tensor([1, 0]), torch.randn(2, 6, 6, generator=g))
    native, ref = _run_both(lambda: UPSNetFusion(table)(sem, [inst])[0].segment_map)
    assert torch.equal(native, ref)
    native, ref = _run_both(lambda: HeuristicFusion(table)(sem, [inst])[0].segment_map)
    assert torch.equal(native, ref)


def test_fusion_from_several_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    table = tiny_table(2, 2)
    g = torch.Generator().manual_seed(9)
    sems = [torch.randn(1, 4, 48, 40, generator=g) for _ in range(6)]
    inst = Instances(torch.tensor([[3.0, 4.0, 30.0, 40.0]]), torch.tensor([0.9]), torch.tensor([0]),
                     torch.randn(1, 8, 8, generator=g))
    fusion = UPSNetFusion(table)
    serial = [fusion(s, [inst])[0].segment_map for s in sems]
    with ThreadPoolExecutor(3) as ex:
        parallel = list(ex.map(lambda s: fusion(s, [inst])[0].segment_map, sems))
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_backend_switch_is_scoped_validated_and_per_context():
    import contextvars

    assert ops.current_backend() == "auto"
    with ops.backend("torch"):
        assert ops.current_backend() == "torch"
        assert contextvars.Context().run(ops.current_backend) == "auto"  # a fresh context (thread, task) is unaffected
        with ops.backend("native"):
            assert ops.current_backend() == "native"
        assert ops.current_backend() == "torch"
    assert ops.current_backend() == "auto"
    with pytest.raises(ValueError, match="one of"), ops.backend("cuda"):  # type: ignore[arg-type]
        pass


def test_native_without_the_extension_names_the_fix(monkeypatch):
    monkeypatch.setattr(switch, "_built", None)
    monkeypatch.setattr(switch, "_found", None)
    with pytest.raises(RuntimeError, match="not built: install a C compiler"), ops.backend("native"):
        pass
    with ops.backend("auto"):
        assert switch.native_kernels() is None  # auto falls back to torch


def test_an_extension_built_from_other_sources_is_not_called(monkeypatch):
    """An editable install whose sources moved on: the old build is refused with a warning naming the rebuild,
    and the fusions take the torch path (same results) rather than call kernels with other arguments."""
    import types

    assert switch._checked(switch._found) is switch._found  # this build matches these sources
    assert switch._checked(None) is None
    for old in (types.SimpleNamespace(), types.SimpleNamespace(API_VERSION=switch.API_VERSION - 1)):
        with pytest.warns(RuntimeWarning, match=r"built from other sources .*pip install -e \."):
            assert switch._checked(old) is None
    monkeypatch.setattr(switch, "_found", types.SimpleNamespace(API_VERSION=1))
    monkeypatch.setattr(switch, "_built", None)
    with pytest.raises(RuntimeError, match="the one installed is older: rebuild"), ops.backend("native"):
        pass
    sem = torch.randn(4, 12, 10)
    inst = Instances(torch.tensor([[1.0, 2.0, 8.0, 9.0]]), torch.tensor([0.9]), torch.tensor([1]), torch.randn(1, 6, 6))
    assert UPSNetFusion(tiny_table(2, 2))(sem[None], [inst])[0].num_segments > 0  # the torch path runs


@settings(max_examples=60, deadline=None)
@given(q=st.integers(1, 300), h=st.integers(0, 40), w=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
def test_count_and_relabel_keys_native_equal_torch(q, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, q, (h, w), generator=g, dtype=torch.int32)
    lut = torch.randint(-5, 1000, (q,), generator=g, dtype=torch.int32)
    with ops.backend("native"):
        counts, relabelled = count_keys(keys, q), relabel_keys(lut, keys)
    with ops.backend("torch"):
        assert torch.equal(counts, count_keys(keys, q))
        assert torch.equal(relabelled, relabel_keys(lut, keys))
    assert counts.dtype == torch.int64 and relabelled.dtype == torch.int32 and int(counts.sum()) == h * w


@pytest.mark.parametrize("name", ["native", "torch"])
@pytest.mark.parametrize("bad", [-1, 4])
def test_count_and_relabel_keys_reject_keys_outside_the_table(name, bad):
    keys = torch.tensor([[0, 3], [bad, 1]], dtype=torch.int32)
    lut = torch.arange(4, dtype=torch.int32)
    with ops.backend(name):
        with pytest.raises(ValueError, match=r"0\.\.3"):
            count_keys(keys, 4)
        with pytest.raises((ValueError, IndexError, RuntimeError)):
            relabel_keys(lut, keys)
