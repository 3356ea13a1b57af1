"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from panoptic import CategoryTable, PanopticResult
from panoptic.segments import assemble_result

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def require_oracle(module: str):
    """Import an optional reference implementation; skip without it, unless CI demands it."""
    if os.environ.get("PANOPTIC_REQUIRE_ORACLE") == "1":
        return importlib.import_module(module)  # CI installs the oracles: a missing one must fail
    return pytest.importorskip(module)


def require_native(module: str):
    """Import an optional C extension; skip without it (no compiler at install), unless CI demands it."""
    if os.environ.get("PANOPTIC_REQUIRE_NATIVE") == "1":
        return importlib.import_module(module)  # CI has a compiler: an extension that did not build must fail
    return pytest.importorskip(module, reason="the C extension was not built (no compiler at install)")


def _native_built() -> bool:
    from panoptic._ops.switch import _built

    return _built is not None


#: The fusion backends this install can run (``panoptic.ops.backend``): the C kernels when built, and torch.
BACKENDS = (["native"] if _native_built() else []) + ["torch"]


@pytest.fixture(params=BACKENDS)
def ops_backend(request):
    """Run the test under each backend of :data:`BACKENDS` (the switch, not a patched module)."""
    from panoptic import ops

    with ops.backend(request.param):
        yield request.param


def tiny_table(num_stuff: int = 2, num_things: int = 2) -> CategoryTable:
    """A table with stuff ids 1..num_stuff and thing ids 101.. ."""
    cats = [{"id": i + 1, "name": f"stuff{i}", "isthing": 0} for i in range(num_stuff)]
    cats += [{"id": 101 + i, "name": f"thing{i}", "isthing": 1} for i in range(num_things)]
    return CategoryTable.from_coco(cats)


def result_from_labels(labels: torch.Tensor, table: CategoryTable, categories: list[int],
                       crowd: list[bool] | None = None) -> PanopticResult:
    """A result from a candidate map (-1 void) and the contiguous category of each candidate."""
    cat = torch.tensor(categories, dtype=torch.int64)
    k = len(categories)
    iscrowd = torch.tensor(crowd if crowd is not None else [False] * k, dtype=torch.bool)
    return assemble_result(labels, cat, table.isthing_tensor()[cat], torch.ones(k), torch.full((k,), -1),
                           iscrowd=iscrowd)


def same_segmentation(a: PanopticResult, b: PanopticResult) -> bool:
    """Same map, categories, thing flags and areas (scores, sources and unknown flags aside)."""
    return (torch.equal(a.segment_map.cpu(), b.segment_map.cpu()) and torch.equal(a.category.cpu(), b.category.cpu())
            and torch.equal(a.isthing.cpu(), b.isthing.cpu()) and torch.equal(a.area.cpu(), b.area.cpu()))
