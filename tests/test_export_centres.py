"""CentreOffsetFusion's static-shape graph and its exported program equal the eager fusion exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from export_checks import assert_onnx_runtime_equals_eager, assert_same_results
from test_centre_offset import TABLE, one_hot, random_case

from panoptic import CentreOffsetFusion, CentreOffsets
from panoptic.export import export_fusion, fusion_graph, pack, run_exported

FLAVORS = ("detectron2", "deeplab2")


def _batch(seed: int, b: int | None = None, size: tuple[int, int] | None = None,
           labels: bool = False) -> tuple[list[CentreOffsets], dict]:
    """``b`` images of one size from :func:`random_case` (quantised heatmaps: ties, flat maxima, no centre)."""
    g = torch.Generator().manual_seed(seed)
    b = b if b is not None else int(torch.randint(1, 4, (), generator=g))
    h, w = size if size is not None else (int(torch.randint(8, 40, (), generator=g)),
                                          int(torch.randint(8, 40, (), generator=g)))
    images, params = [], {}
    for i in range(b):
        logits, heat, offsets, params = random_case(seed * 7 + i, h, w)
        if labels:
            images.append(CentreOffsets.from_labels(logits.argmax(0).to(torch.uint8), heat, offsets))
        else:
            images.append(CentreOffsets(logits, heat, offsets))
    return images, params


def test_graph_hand_computed_grouping_vote_and_stuff() -> None:
    """Two centres split the car pixels by offsets; the stuff road keeps its area; the stuff below the
    threshold area is void."""
    labels = [[0, 0, 2, 2, 2, 2],
              [0, 0, 2, 2, 3, 2],
              [1, 0, 0, 0, 0, 0]]
    heat = torch.zeros(1, 3, 6)
    heat[0, 0, 2] = heat[0, 2, 5] = 0.9  # centres (0, 2) and (2, 5)
    offsets = torch.zeros(2, 3, 6)
    offsets[0, 1, 4] = 1.0  # (1, 4) points to (2, 4): nearer to the second centre
    fusion = CentreOffsetFusion(TABLE, nms_kernel=3, stuff_area=2)
    x = [CentreOffsets(one_hot(labels), heat, offsets)]
    out = run_exported(fusion_graph(fusion), fusion, x)[0]
    assert out.equal(fusion(x)[0])
    assert out.segment_map.tolist() == [[3, 3, 1, 1, 1, 2],
                                        [3, 3, 1, 1, 2, 2],
                                        [0, 3, 3, 3, 3, 3]]
    # the second centre owns (0, 5), (1, 4) and (1, 5): labels 2, 3, 2, majority 2
    assert out.category.tolist() == [2, 2, 0] and out.source.tolist() == [0, 1, -1]
    assert out.area.tolist() == [5, 3, 9]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_graph_equals_eager_on_random_batches(flavor: str) -> None:
    hit = {"no_centre": 0, "several": 0, "unequal_k": 0}
    for seed in range(60):
        images, p = _batch(seed)
        fusion = CentreOffsetFusion(TABLE, flavor=flavor, **p)
        graph = fusion_graph(fusion)
        eager = fusion(images)
        assert_same_results(eager, run_exported(graph, fusion, images))
        ks = [int((r.source >= 0).sum()) for r in eager]
        hit["no_centre"] += min(ks) == 0
        hit["several"] += max(ks) > 1
        hit["unequal_k"] += len(set(ks)) > 1
    assert min(hit.values()) >= 3, hit  # padding, K = 0 images and several centres all reached



@pytest.mark.parametrize("flavor", FLAVORS)
def test_graph_breaks_semantic_ties_as_eager(flavor: str) -> None:
    """Logits rounded to whole numbers tie between classes on many pixels: the first class wins, as in eager."""
    ties = 0
    for seed in range(20):
        images, p = _batch(seed)
        images = [CentreOffsets(x.semantic.round(), x.centre_heatmap, x.offsets) for x in images]
        top = [x.semantic.topk(2, 0).values for x in images]
        ties += sum(int((t[0] == t[1]).sum()) for t in top)
        fusion = CentreOffsetFusion(TABLE, flavor=flavor, **p)
        assert_same_results(fusion(images), run_exported(fusion_graph(fusion), fusion, images))
    assert ties > 100, ties

@pytest.mark.parametrize("flavor", FLAVORS)
def test_graph_equals_eager_on_label_inputs(flavor: str) -> None:
    for seed in range(20):
        images, p = _batch(seed, labels=True)
        fusion = CentreOffsetFusion(TABLE, flavor=flavor, **p)
        out = run_exported(fusion_graph(fusion), fusion, images)
        assert_same_results(fusion(images), out)
        assert all(bool(r.score[r.source < 0].isnan().all()) for r in out)  # no logits: stuff scores NaN


def test_pack_errors_name_the_fix() -> None:
    fusion = CentreOffsetFusion(TABLE)
    (a,), _ = _batch(1, b=1, size=(8, 8))
    (b,), _ = _batch(2, b=1, size=(9, 8))
    with pytest.raises(ValueError, match="separate calls"):
        pack(fusion, [a, b])
    with pytest.raises(ValueError, match="wrap a single image"):
        pack(fusion, a)
    with pytest.raises(ValueError, match="drop output_size"):
        pack(fusion, [a], output_size=(8, 8))
    with pytest.raises(ValueError, match="no image"):
        pack(fusion, [])
    bad = CentreOffsets(a.semantic.clone(), a.centre_heatmap, a.offsets)
    bad.semantic[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pack(fusion, [bad])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_exported_program_equals_eager_on_other_shapes(flavor: str) -> None:
    images, p = _batch(400, b=2, size=(16, 20))
    fusion = CentreOffsetFusion(TABLE, flavor=flavor, **{**p, "top_k": 5, "stuff_area": 20})
    program = export_fusion(fusion, images)
    assert not any(n.target in (torch.ops.aten.nonzero.default, torch.ops.aten.item.default)
                   for n in program.graph.nodes)
    for seed in range(401, 413):  # other batch sizes, centre counts (K = 0 included) and image sizes
        images, _ = _batch(seed)
        assert_same_results(fusion(images), run_exported(program, fusion, images))
    (one,), _ = _batch(414, b=1)
    assert export_fusion(fusion, [one]).module() is not None  # one image: repeated to two for the example


def test_onnx_runtime_equals_eager() -> None:
    fusion = CentreOffsetFusion(TABLE, top_k=5, stuff_area=20)
    program = export_fusion(fusion, _batch(500, b=2, size=(12, 16))[0])
    assert_onnx_runtime_equals_eager(program, fusion, [((_batch(seed)[0],), {}) for seed in range(501, 507)])


def test_export_command_writes_a_centre_program(tmp_path) -> None:
    from panoptic.cli import main
    from panoptic.data import synthetic_categories

    assert main(["export", "--fusion", "centre", "--stuff-area-limit", "4", "--out", str(tmp_path / "c.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "c.pt2"))
    table = synthetic_categories()
    fusion = CentreOffsetFusion(table, stuff_area=4)
    g = torch.Generator().manual_seed(3)
    for h, w in ((10, 13), (17, 9)):
        heat = F.avg_pool2d(torch.rand(2, 1, h, w, generator=g), 3, 1, 1)
        images = [CentreOffsets(torch.randn(table.num_classes, h, w, generator=g), heat[i],
                                torch.randn(2, h, w, generator=g) * 3) for i in range(2)]
        assert_same_results(fusion(images), run_exported(program, fusion, images))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_batched_forward_equals_the_per_image_loop(flavor: str) -> None:
    loop = CentreOffsetFusion(TABLE, nms_kernel=3, stuff_area=6, flavor=flavor)  # type: ignore[arg-type]
    batched = CentreOffsetFusion(TABLE, nms_kernel=3, stuff_area=6, flavor=flavor, batched=True)  # type: ignore[arg-type]
    for seed in range(400, 420):
        images, _ = _batch(seed, labels=seed % 4 == 0)
        assert_same_results(loop(images), batched(images))
    with pytest.raises(ValueError, match="share their size"):
        batched([_batch(1, b=1, size=(8, 9))[0][0], _batch(2, b=1, size=(9, 8))[0][0]])
