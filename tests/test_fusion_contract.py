"""The contract every fusion keeps, run over every fusion and flavour: one list of cases, :data:`CASES`.

A case is a fusion (with its flavour) and the :class:`Family` of inputs it reads: semantic logits and
:class:`~panoptic.Instances` (UPSNet's head, the heuristics), :class:`~panoptic.Queries` (MaskFormer-style) or
:class:`~panoptic.CentreOffsets` (Panoptic-DeepLab). Every registered fusion (``panoptic.fusion.FUSIONS``) and
every flavour of the heuristic, MaskFormer and centre-offset fusions is a case, so a new flavour gets these tests
without writing any; a new family writes one :class:`Family`. The contract: invalid inputs are ``ValueError``\\ s,
non-finite values are rejected, no instance (no query kept, no centre) gives a valid stuff-only result, a 1x1
image works, oracle inputs built from a ground truth reproduce it, ``output_size`` and batches, and ``meta``
tensors are refused with the fix. No fusion runs on ``meta``: the segments depend on the values (which masks
are kept, which pixel goes where), so the result's shape is unknown without them; each refuses it instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import CentreOffsets, Instances, PanopticResult, Queries
from panoptic.data import synthetic_categories
from panoptic.formats import to_pairs
from panoptic.fusion import FUSIONS, CentreOffsetFusion, MaskFormerFusion, PanopticFusion, PruningConfig, build_fusion
from panoptic.fusion.centre_offset import _FLAVORS as CENTRE_FLAVORS
from panoptic.fusion.heuristic import _FLAVORS as HEURISTIC_FLAVORS
from panoptic.fusion.maskformer import _RULES as QUERY_FLAVORS
from panoptic.fusion.oracle import oracle_inputs
from panoptic.segments import assemble_result

TABLE = synthetic_categories()
C, NST, K = TABLE.num_classes, TABLE.num_stuff, TABLE.num_classes
BIG = 20.0  # a confident logit: sigmoid / softmax saturate, so thresholds of every flavour are passed

Args = tuple[Any, ...]


# ================================================================================ the three input families
def _instance(h: int, w: int) -> Instances:
    """One thing (label 0) covering the top-left quarter, as 28x28 ROI logits."""
    box = torch.tensor([[0.0, 0.0, w / 2, h / 2]])
    return Instances(box, torch.tensor([0.9]), torch.tensor([0]), torch.full((1, 28, 28), 5.0))


def _halves(h: int, w: int) -> torch.Tensor:
    """``(C, H, W)`` logits of stuff 0 on the top half and stuff 1 below."""
    logits = torch.zeros(C, h, w)
    logits[0, : h // 2] = 5.0
    logits[1, h // 2:] = 5.0
    return logits


def _onehot_logits(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """``(channels, H, W)`` logits: ``+BIG`` on each pixel's label, ``-BIG`` elsewhere (label < 0: all ``-BIG``)."""
    onehot = labels[None] == torch.arange(channels)[:, None, None]
    return torch.where(onehot, BIG, -BIG)


# semantic logits + Instances: fusion(logits (B, C, H, W), [Instances] * B)
def _si_bad() -> list[Args]:
    bad_label = Instances(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.ones(1), torch.tensor([TABLE.num_things]),
                          torch.zeros(1, 28, 28))
    return [(torch.zeros(1, C + 1, 8, 8), [Instances.empty()]),  # channels != table.num_classes
            (torch.zeros(2, C, 8, 8), [Instances.empty()]),  # one Instances per image
            (torch.zeros(C, 8, 8), [Instances.empty()]),  # not batched
            (torch.zeros(1, C, 8, 8), [bad_label])]  # a label outside the table's things


def _si_non_finite(bad: float) -> list[Args]:
    logits = torch.zeros(1, C, 8, 8)
    logits[0, 1, 3, 4] = bad
    inst = _instance(8, 8)
    inst.mask_logits[0, 3, 3] = bad
    return [(logits, [_instance(8, 8)]), (torch.zeros(1, C, 8, 8), [inst])]


def _si_one_pixel() -> list[Args]:
    logits = torch.zeros(1, C, 1, 1)
    logits[0, NST - 1, 0, 0] = 5.0
    return [(logits, [Instances.empty()]), (logits, [_instance(1, 1)])]


def _si_oracle(gt: PanopticResult) -> Args:
    sem, inst = oracle_inputs(gt, TABLE)
    return sem[None], [inst]


# Queries: fusion([Queries] * B); class k of the model is contiguous category k (the default class map)
def _query(labels: list[int], masks: torch.Tensor) -> Queries:
    """Queries whose class is ``labels[i]`` (``K`` = no object) with ``+-BIG`` logits, masks ``(Q, H, W)`` bool."""
    cls = torch.where(torch.tensor(labels, dtype=torch.int64)[:, None] == torch.arange(K + 1), BIG, -BIG)
    return Queries(cls, torch.where(masks, BIG, -BIG))


def _q_empty(h: int, w: int) -> Args:
    top = torch.zeros(h, w, dtype=torch.bool)
    top[: h // 2] = True
    # two stuff queries, and two "no object" ones whose masks would claim every pixel if they were kept
    return ([_query([0, 1, K, K], torch.stack([top, ~top, ~top, top]))],)


def _q_bad() -> list[Args]:
    return [([Queries(torch.zeros(3, K + 2), torch.zeros(3, 8, 8))],),  # class columns != K + 1
            ([Queries(torch.zeros(3, K + 1), torch.zeros(2, 8, 8))],),  # class rows != masks
            ([Queries(torch.zeros(3, K + 1), torch.zeros(3, 1, 8, 8))],),  # (Q, 1, h, w) masks
            ([Queries(torch.zeros(3, K + 1, dtype=torch.int64), torch.zeros(3, 8, 8))],),  # integer logits
            (torch.zeros(3, K + 1),)]  # a tensor, not Queries


def _q_non_finite(bad: float) -> list[Args]:
    q1, q2 = Queries(torch.zeros(3, K + 1), torch.zeros(3, 8, 8)), Queries(torch.zeros(3, K + 1), torch.zeros(3, 8, 8))
    q1.class_logits[1, 2] = bad
    q2.mask_logits[0, 4, 4] = bad
    return [([q1],), ([q2],)]


def _q_one_pixel() -> list[Args]:
    return [([_query([NST - 1], torch.ones(1, 1, 1, dtype=torch.bool))],), ([_query([], torch.zeros(0, 1, 1,
                                                                                      dtype=torch.bool))],)]


def _q_oracle(gt: PanopticResult) -> Args:
    """One confident query per segment (mask ``+BIG`` on it, ``-BIG`` elsewhere) and one "no object" query."""
    ids = torch.arange(1, gt.num_segments + 1)
    masks = gt.segment_map[None] == ids[:, None, None]
    masks = torch.cat([masks, torch.ones_like(gt.segment_map, dtype=torch.bool)[None]])
    return ([_query([*gt.category.tolist(), K], masks)],)


# CentreOffsets: fusion([CentreOffsets] * B), every map at the output size
def _centres(semantic: torch.Tensor, centres: list[tuple[int, int]], owner: torch.Tensor | None = None
             ) -> CentreOffsets:
    """Heatmap ``1`` at each centre; offsets from each pixel of ``owner == i + 1`` to centre ``i``, 0 elsewhere."""
    h, w = semantic.shape[1:]
    heat, offsets = torch.zeros(1, h, w), torch.zeros(2, h, w)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i, (cy, cx) in enumerate(centres):
        heat[0, cy, cx] = 1.0
        mine = owner == i + 1
        offsets[0][mine] = (cy - yy[mine]).float()
        offsets[1][mine] = (cx - xx[mine]).float()
    return CentreOffsets(semantic, heat, offsets)


def _c_bad() -> list[Args]:
    sem, heat, off = torch.zeros(C, 8, 8), torch.zeros(1, 8, 8), torch.zeros(2, 8, 8)
    return [([CentreOffsets(sem, heat, off.permute(1, 2, 0))],),  # channels-last offsets
            ([CentreOffsets(torch.zeros(C + 1, 8, 8), heat, off)],),  # channels != table.num_classes
            ([CentreOffsets(sem, heat[0], off)],),  # heatmap without its channel
            ([CentreOffsets(sem, heat, off, semantic_kind="probs")],),  # type: ignore[arg-type]
            (CentreOffsets(sem, heat, off),)]  # one image, not a list


def _c_non_finite(bad: float) -> list[Args]:
    out = []
    for i in range(3):
        maps = [torch.zeros(C, 8, 8), torch.zeros(1, 8, 8), torch.zeros(2, 8, 8)]
        maps[i][0, 3, 4] = bad
        out.append(([CentreOffsets(*maps)],))
    return out


def _c_one_pixel() -> list[Args]:
    sem = torch.full((C, 1, 1), -5.0)
    sem[NST - 1] = 5.0
    thing = torch.full((C, 1, 1), -5.0)
    thing[NST] = 5.0
    return [([_centres(sem, [])],), ([_centres(thing, [(0, 0)], torch.ones(1, 1, dtype=torch.int64))],)]


def _c_oracle(gt: PanopticResult) -> Args:
    """Semantic ``+-BIG`` logits; each thing's centre at its middle pixel (raster order), exact offsets to it."""
    centres, owner = [], torch.zeros_like(gt.segment_map)
    for i in torch.nonzero(gt.isthing)[:, 0].tolist():
        pixels = torch.nonzero(gt.segment_map == i + 1)
        centres.append(tuple(pixels[len(pixels) // 2].tolist()))
        owner[gt.segment_map == i + 1] = len(centres)
    labels = torch.where(gt.segment_map > 0, gt.category[(gt.segment_map - 1).clamp(min=0)], -1)
    return ([_centres(_onehot_logits(labels, C), centres, owner)],)


@dataclass(frozen=True)
class Family:
    """How one kind of fusion input is built for each contract case (each builder returns ``fusion(*args)``).

    Attributes:
        empty: ``(H, W) ->`` stuff 0 on the top half, stuff 1 below, no instance (query, centre).
        bad: Invalid inputs, each a ``ValueError``.
        non_finite: ``bad value ->`` inputs with a NaN or inf in each tensor.
        one_pixel: 1x1 images, without and with a thing.
        oracle: ``ground truth ->`` perfect inputs.
        meta: Inputs on the ``meta`` device.
        no_area_filter: Constructor overrides that switch the fusion's area filters off.
        oracle_void: Whether the fusion can output void where the inputs say so (semantic logits + instances
            and queries can, centres cannot: every pixel has a semantic class), so the oracle's ground truth may
            hold void pixels.
        output_size: Whether ``fusion(*args, output_size=...)`` exists (``CentreOffsets`` are at the output size).
    """

    empty: Callable[[int, int], Args]
    bad: Callable[[], list[Args]]
    non_finite: Callable[[float], list[Args]]
    one_pixel: Callable[[], list[Args]]
    oracle: Callable[[PanopticResult], Args]
    meta: Callable[[], Args]
    no_area_filter: dict[str, Any] = field(default_factory=dict)
    oracle_void: bool = True
    output_size: bool = True


SEMANTIC_INSTANCES = Family(
    empty=lambda h, w: (_halves(h, w)[None], [Instances.empty()]), bad=_si_bad, non_finite=_si_non_finite,
    one_pixel=_si_one_pixel, oracle=_si_oracle,
    meta=lambda: (torch.zeros(1, C, 8, 8, device="meta"), [Instances.empty()]),
    no_area_filter={"stuff_area_limit": 0})
QUERIES = Family(
    empty=_q_empty, bad=_q_bad, non_finite=_q_non_finite, one_pixel=_q_one_pixel, oracle=_q_oracle,
    meta=lambda: ([Queries(torch.zeros(3, K + 1, device="meta"), torch.zeros(3, 8, 8, device="meta"))],))
CENTRES = Family(
    empty=lambda h, w: ([_centres(_halves(h, w), [])],), bad=_c_bad, non_finite=_c_non_finite,
    one_pixel=_c_one_pixel, oracle=_c_oracle,
    meta=lambda: ([CentreOffsets(*(torch.zeros(n, 8, 8, device="meta") for n in (C, 1, 2)))],),
    no_area_filter={"stuff_area": 0}, oracle_void=False, output_size=False)


@dataclass(frozen=True)
class Case:
    """One fusion and flavour, the family of inputs it reads, and overrides that make oracle inputs exact."""

    id: str
    build: Callable[..., PanopticFusion]
    family: Family
    oracle_void: bool | None = None  # None: the family's ``oracle_void``

    @property
    def void(self) -> bool:
        """Whether the oracle's ground truth may hold void pixels for this case."""
        return self.family.oracle_void if self.oracle_void is None else self.oracle_void


# Every registered fusion with its defaults, and every flavour of each fusion class that has flavours.
CASES: list[Case] = [Case(f"{n}-default", lambda n=n, **kw: build_fusion(n, TABLE, **kw), SEMANTIC_INSTANCES)
                     for n in FUSIONS if n != "heuristic"]
CASES += [Case(f"heuristic-{f}", lambda f=f, **kw: build_fusion("heuristic", TABLE, flavor=f, **kw),
               SEMANTIC_INSTANCES) for f in sorted(HEURISTIC_FLAVORS)]
# MaskFormer's and HF transformers' rules give every pixel to its best query, with no per-pixel mask threshold
# (Mask2Former added one), so their outputs have no void pixel.
CASES += [Case(f"maskformer-{f}", lambda f=f, **kw: MaskFormerFusion(TABLE, flavor=f, **kw), QUERIES,
               oracle_void=f not in ("maskformer", "transformers")) for f in sorted(QUERY_FLAVORS)]
CASES += [Case(f"centre-{f}", lambda f=f, **kw: CentreOffsetFusion(TABLE, flavor=f, **kw), CENTRES)
          for f in sorted(CENTRE_FLAVORS)]
# UPSNet's NMS would drop oracle things whose boxes overlap; the oracle's masks are disjoint anyway.
ORACLE_OVERRIDES = {"upsnet-default": {"pruning": PruningConfig(nms_iou=None)}}

every_case = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def test_every_fusion_and_flavour_has_a_case():
    ids = {c.id for c in CASES}
    assert {f"maskformer-{f}" for f in QUERY_FLAVORS} | {f"centre-{f}" for f in CENTRE_FLAVORS} <= ids
    assert {f"heuristic-{f}" for f in HEURISTIC_FLAVORS} <= ids and "upsnet-default" in ids
    assert len(ids) == len(CASES) >= 1 + len(HEURISTIC_FLAVORS) + len(QUERY_FLAVORS) + len(CENTRE_FLAVORS)


# ================================================================================ the contract
@every_case
def test_bad_inputs_are_value_errors(case: Case) -> None:
    fusion = case.build()
    for args in case.family.bad():
        with pytest.raises(ValueError):
            fusion(*args)


@every_case
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected(case: Case, bad: float) -> None:
    fusion = case.build()
    for args in case.family.non_finite(bad):
        with pytest.raises(ValueError, match="NaN or inf"):
            fusion(*args)


@every_case
def test_no_instance_gives_a_valid_stuff_only_result(case: Case) -> None:
    res = case.build(**case.family.no_area_filter)(*case.family.empty(12, 10))[0]
    res.validate(TABLE)
    assert res.image_size == (12, 10) and not bool(res.isthing.any())
    assert sorted(res.category.tolist()) == [0, 1] and sorted(res.area.tolist()) == [60, 60]


QUERY_CASES = [c for c in CASES if c.family is QUERIES]


@pytest.mark.parametrize("case", QUERY_CASES, ids=[c.id for c in QUERY_CASES])
def test_no_query_kept_gives_an_all_void_result(case: Case) -> None:
    for q in (_query([K, K], torch.ones(2, 6, 5, dtype=torch.bool)), _query([], torch.zeros(0, 6, 5) > 0)):
        res = case.build()([q])[0]  # only "no object" queries, then no query at all
        res.validate(TABLE)
        assert res.image_size == (6, 5) and res.num_segments == 0 and not bool(res.segment_map.any())


@every_case
def test_a_one_pixel_image(case: Case) -> None:
    fusion = case.build(**case.family.no_area_filter)
    for args in case.family.one_pixel():
        res = fusion(*args)[0]
        res.validate(TABLE)
        assert res.image_size == (1, 1) and res.segment_map.shape == (1, 1)
        assert int(res.area.sum()) + int((res.segment_map == 0).sum()) == 1


@every_case
def test_output_size_and_batches(case: Case) -> None:
    if not case.family.output_size:
        pytest.skip("CentreOffsets maps are at the output size: the fusion has no output_size")
    a, b = case.family.empty(8, 6), case.family.empty(8, 6)
    args = (torch.cat([a[0], b[0]]), a[1] + b[1]) if len(a) == 2 else (a[0] + b[0],)
    out = case.build(**case.family.no_area_filter)(*args, output_size=(16, 12))
    assert len(out) == 2 and all(r.image_size == (16, 12) for r in out)
    for r in out:
        r.validate(TABLE)
        assert sorted(r.area.tolist()) == [96, 96]


@every_case
def test_meta_tensors_are_refused_with_the_fix(case: Case) -> None:
    with pytest.raises(ValueError, match="meta"):
        case.build()(*case.family.meta())


def _random_gt(g: torch.Generator, h: int, w: int, n_things: int, void: bool) -> PanopticResult:
    """Two stuff halves, disjoint rectangular things on a grid, a void first row when ``void``."""
    labels = torch.zeros(h, w, dtype=torch.int64)
    labels[:, w // 2:] = 1
    cats = [0, 1]
    for k in range(n_things):
        y0, x0 = 2 + 4 * (k // 3), 1 + 6 * (k % 3)
        labels[y0:y0 + 3, x0:x0 + 4] = 2 + k
        cats.append(NST + int(torch.randint(0, TABLE.num_things, (1,), generator=g)))
    if void:
        labels[0] = -1
    cat = torch.tensor(cats)
    return assemble_result(labels, cat, TABLE.isthing_tensor()[cat], torch.ones(len(cats)),
                           torch.full((len(cats),), -1))


@every_case
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_things=st.integers(0, 6))
def test_oracle_inputs_reproduce_the_ground_truth(case: Case, seed: int, n_things: int) -> None:
    gt = _random_gt(torch.Generator().manual_seed(seed), 12, 20, n_things, case.void)
    fusion = case.build(**case.family.no_area_filter, **ORACLE_OVERRIDES.get(case.id, {}))
    res = fusion(*case.family.oracle(gt))[0]
    res.validate(TABLE)
    # The same partition into the same categories (segment ids may be numbered in another order).
    assert torch.equal(to_pairs(res)[..., 0], to_pairs(gt)[..., 0])
    assert res.num_segments == gt.num_segments
    pairs = torch.unique(torch.stack([res.segment_map.flatten(), gt.segment_map.flatten()]), dim=1)
    assert pairs.shape[1] == gt.num_segments + (1 if bool((gt.segment_map == 0).any()) else 0)  # one-to-one
