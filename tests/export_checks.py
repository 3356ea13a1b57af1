"""Shared checks of the export tests: results equal one by one, and an exported program run in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from panoptic.export import assemble_results, pack
from panoptic.fusion.base import PanopticFusion
from panoptic.structures import PanopticResult


def assert_same_results(eager: Sequence[PanopticResult], other: Sequence[PanopticResult]) -> None:
    """Same number of results, each equal (map, unknown mask and segment table)."""
    assert len(eager) == len(other)
    for a, b in zip(eager, other, strict=True):
        assert a.equal(b), (a, b)

def assert_onnx_runtime_equals_eager(program: torch.export.ExportedProgram, fusion: PanopticFusion,
                                     batches: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    """Convert ``program`` with the dynamo ONNX exporter, run it in ONNX Runtime on each batch's packed inputs and
    compare the assembled results with ``fusion(*args, **kwargs)`` (skipped without onnxruntime / onnxscript).

    Args:
        batches: ``(args, kwargs)`` of each eager call, e.g. ``((queries,), {"output_size": (H, W)})``.
    """
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for args, kwargs in batches:
        packed = pack(fusion, *args, **kwargs)
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), packed.args, strict=True)}
        outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
        assert_same_results(fusion(*args, **kwargs), assemble_results(fusion, packed, outputs))
