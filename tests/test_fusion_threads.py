"""The thread count of a fusion call (``panoptic._ops.threads``): one thread on small images, the free cores on
large ones, the caller's count restored after, also with calls from several threads at once."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import tiny_table

from panoptic import Instances, PanopticResult
from panoptic._ops import threads as ops_threads
from panoptic.fusion import UPSNetFusion


class Recorder(UPSNetFusion):
    """UPSNetFusion that records the torch thread count inside its per-image step."""

    seen: list[int]

    def fuse_image(self, semantic_logits: torch.Tensor, instances: Instances) -> PanopticResult:
        self.seen.append(torch.get_num_threads())
        return super().fuse_image(semantic_logits, instances)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _call(h: int, w: int) -> tuple[list[int], int]:
    fusion = Recorder(tiny_table(1, 1), stuff_area_limit=0)
    fusion.seen = []
    fusion(torch.randn(1, 2, h, w), [Instances.empty()])
    return fusion.seen, torch.get_num_threads()


def test_small_images_run_on_one_thread_and_the_count_is_restored(two_threads):
    assert _call(64, 128) == ([1], 2)


@pytest.mark.parametrize(("free", "expected"), [(None, 2), (1, 1), (2, 2), (5, 2)])
def test_large_images_use_the_free_cores_at_most_the_callers_count(two_threads, monkeypatch, free, expected):
    monkeypatch.setattr(ops_threads, "free_cores", lambda: free)
    assert _call(512, 1024) == ([expected], 2)


@pytest.mark.parametrize(("free", "expected"), [(1, 1), (2, 2)])
def test_the_chosen_count_is_recorded_once_per_call(two_threads, monkeypatch, free, expected):
    # the benchmark reads CHOSEN to tell "the same code on as many threads" from a real difference
    monkeypatch.setattr(ops_threads, "free_cores", lambda: free)
    before = ops_threads.CHOSEN.copy()
    _call(512, 1024)  # one outer call; the per-image step inside does not count again
    _call(64, 128)
    assert ops_threads.CHOSEN - before == Counter({expected: 1}) + Counter({1: 1})


def test_concurrent_calls_restore_the_callers_count(two_threads):
    fusion = UPSNetFusion(tiny_table(1, 1))
    sem = torch.randn(1, 2, 32, 48)
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda _: fusion(sem, [Instances.empty()]), range(40)))
    assert torch.get_num_threads() == 2


def test_free_cores_from_the_counters_less_this_process(monkeypatch):
    # 2 cores; between the two reads: 100 jiffies of 200 busy (1 core) and 0.5 s of this process's CPU in 1 s.
    counters = iter([(1000, 5000), (1100, 5200)])
    clock = iter([10.0, 11.0])
    cpu = iter([3.0, 3.5])
    monkeypatch.setattr(ops_threads, "_cpu_times", lambda cpus: next(counters))
    monkeypatch.setattr(ops_threads, "available_cores", lambda: 2)
    monkeypatch.setattr(ops_threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(ops_threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(ops_threads.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(ops_threads, "_state", dict(ops_threads._state, t=None))  # restored after the test
    assert ops_threads.free_cores() is None  # the first read has nothing to compare with
    # others = 1.0 busy core - 0.5 of ours = 0.5 -> 2 - 0.5 = 1.5 free, rounded to the nearest core: 2
    assert ops_threads.free_cores() == 2


def test_input_checks_run_inside_the_thread_rule(two_threads, monkeypatch):
    """The finiteness checks are passes over the inputs: on a busy machine they too must not run on threads the
    rule would not give the call (here a small image: one thread), and a refused input restores the count."""
    import panoptic.fusion.base as fusion_base
    from panoptic import CategoryTable, CentreOffsetFusion, CentreOffsets, MaskFormerFusion, Queries

    seen: list[int] = []
    real = fusion_base._all_finite

    def recording(x: torch.Tensor) -> bool:
        seen.append(torch.get_num_threads())
        return real(x)

    monkeypatch.setattr(fusion_base, "_all_finite", recording)
    table = CategoryTable.from_coco([{"id": 1, "isthing": 0}, {"id": 2, "isthing": 1}])
    MaskFormerFusion(table)(Queries(torch.randn(3, 3), torch.randn(3, 16, 16)))
    CentreOffsetFusion(table)([CentreOffsets(torch.randn(2, 16, 16), torch.rand(1, 16, 16), torch.randn(2, 16, 16))])
    UPSNetFusion(table)(torch.randn(1, 2, 16, 16), [Instances.empty()])
    assert seen and set(seen) == {1}
    with pytest.raises(ValueError, match="NaN or inf"):
        MaskFormerFusion(table)(Queries(torch.randn(3, 3), torch.full((3, 16, 16), float("nan"))))
    assert torch.get_num_threads() == 2
