"""The contract every fusion keeps, run over every registered fusion (``panoptic.fusion.FUSIONS``) and flavor.

A fusion added to :data:`~panoptic.fusion.FUSIONS` (or a heuristic flavor) gets these tests without writing
any: input validation, no instances, a 1x1 image, oracle inputs reproduce the ground truth, non-finite logits
rejected, ``output_size`` and the refusal of ``meta`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import Instances
from panoptic.data import synthetic_categories
from panoptic.formats import to_pairs
from panoptic.fusion import FUSIONS, PanopticFusion, PruningConfig, build_fusion
from panoptic.fusion.heuristic import _FLAVORS  # the flavors, to give each the contract
from panoptic.fusion.oracle import oracle_inputs
from panoptic.segments import assemble_result

TABLE = synthetic_categories()
C, NST = TABLE.num_classes, TABLE.num_stuff

# (name, flavor overrides): every registered fusion with its defaults, and every flavor of the heuristic.
CASES: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in FUSIONS if name != "heuristic"]
CASES += [("heuristic", {"flavor": f}) for f in sorted(_FLAVORS)]
IDS = [f"{name}-{kw.get('flavor', 'default')}" for name, kw in CASES]
# What makes oracle inputs exact: no stuff area filter, and no NMS between the (disjoint) oracle instances.
ORACLE_OVERRIDES: dict[str, dict[str, Any]] = {"upsnet": {"pruning": PruningConfig(nms_iou=None)}}


def _build(name: str, overrides: dict[str, Any], **more: Any) -> PanopticFusion:
    return build_fusion(name, TABLE, **overrides, **more)


def _instance(h: int, w: int) -> Instances:
    """One thing (label 0) covering the top-left quarter, as 28x28 ROI logits."""
    box = torch.tensor([[0.0, 0.0, w / 2, h / 2]])
    return Instances(box, torch.tensor([0.9]), torch.tensor([0]), torch.full((1, 28, 28), 5.0))


@pytest.fixture(params=CASES, ids=IDS)
def make(request) -> Callable[..., PanopticFusion]:
    name, overrides = request.param
    return lambda **more: _build(name, overrides, **more)


def test_bad_inputs_are_value_errors(make) -> None:
    fusion = make()
    with pytest.raises(ValueError):
        fusion(torch.zeros(1, C + 1, 8, 8), [Instances.empty()])  # channels != table.num_classes
    with pytest.raises(ValueError):
        fusion(torch.zeros(2, C, 8, 8), [Instances.empty()])  # one Instances per image
    with pytest.raises(ValueError):
        fusion(torch.zeros(C, 8, 8), [Instances.empty()])  # not batched
    bad_label = Instances(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.ones(1), torch.tensor([TABLE.num_things]),
                          torch.zeros(1, 28, 28))
    with pytest.raises(ValueError):
        fusion(torch.zeros(1, C, 8, 8), [bad_label])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_are_rejected(make, bad: float) -> None:
    logits = torch.zeros(1, C, 8, 8)
    logits[0, 1, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        make()(logits, [_instance(8, 8)])


def test_no_instances_gives_a_valid_stuff_only_result(make) -> None:
    logits = torch.zeros(1, C, 12, 10)
    logits[0, 0, :6] = 5.0  # stuff 0 on top, stuff 1 below
    logits[0, 1, 6:] = 5.0
    res = make(stuff_area_limit=0)(logits, [Instances.empty()])[0]
    res.validate(TABLE)
    assert res.image_size == (12, 10) and not bool(res.isthing.any())
    assert sorted(res.category.tolist()) == [0, 1] and res.area.tolist() == [60, 60]


def test_a_one_pixel_image(make) -> None:
    logits = torch.zeros(1, C, 1, 1)
    logits[0, NST - 1, 0, 0] = 5.0
    for inst in (Instances.empty(), _instance(1, 1)):
        res = make(stuff_area_limit=0)(logits, [inst])[0]
        res.validate(TABLE)
        assert res.image_size == (1, 1) and res.segment_map.shape == (1, 1)
        assert int(res.area.sum()) + int((res.segment_map == 0).sum()) == 1


def test_output_size_and_batches(make) -> None:
    fusion = make()
    logits = torch.randn(2, C, 8, 6, generator=torch.Generator().manual_seed(0))
    out = fusion(logits, [_instance(16, 12), Instances.empty()], output_size=(16, 12))
    assert len(out) == 2 and all(r.image_size == (16, 12) for r in out)
    for r in out:
        r.validate(TABLE)


def test_meta_tensors_are_refused_with_the_fix(make) -> None:
    with pytest.raises(ValueError, match="meta"):
        make()(torch.zeros(1, C, 8, 8, device="meta"), [Instances.empty()])


def _random_gt(g: torch.Generator, h: int, w: int, n_things: int):
    """Two stuff halves, disjoint rectangular things on a grid, a void first row."""
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[:, w // 2:] = 1
    cats = [0, 1]
    for k in range(n_things):
        y0, x0 = 2 + 4 * (k // 3), 1 + 6 * (k % 3)
        labels[y0:y0 + 3, x0:x0 + 4] = 2 + k
        cats.append(NST + int(torch.randint(0, TABLE.num_things, (1,), generator=g)))
    labels[0] = -1
    cat = torch.tensor(cats)
    return assemble_result(labels, cat, TABLE.isthing_tensor()[cat], torch.ones(len(cats)),
                           torch.full((len(cats),), -1))


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_things=st.integers(0, 6))
def test_oracle_inputs_reproduce_the_ground_truth(name: str, overrides: dict[str, Any], seed: int,
                                                  n_things: int) -> None:
    gt = _random_gt(torch.Generator().manual_seed(seed), 12, 20, n_things)
    sem, inst = oracle_inputs(gt, TABLE)
    fusion = _build(name, {**overrides, **ORACLE_OVERRIDES.get(name, {})}, stuff_area_limit=0)
    res = fusion(sem[None], [inst])[0]
    res.validate(TABLE)
    # The same partition into the same categories (segment ids may be numbered in another order).
    assert torch.equal(to_pairs(res)[..., 0], to_pairs(gt)[..., 0])
    assert res.num_segments == gt.num_segments
    pairs = torch.unique(torch.stack([res.segment_map.flatten(), gt.segment_map.flatten()]), dim=1)
    assert pairs.shape[1] == gt.num_segments + 1  # a one-to-one map, void included


def test_non_finite_mask_logits_are_rejected(make) -> None:
    inst = _instance(8, 8)
    inst.mask_logits[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN|inf|finite"):
        make()(torch.zeros(1, C, 8, 8), [inst])
