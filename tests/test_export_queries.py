"""MaskFormerFusion's static-shape graph and its exported program equal the eager fusion exactly."""

from __future__ import annotations

import pytest
import torch
from export_checks import assert_onnx_runtime_equals_eager, assert_same_results
from maskformer_refs import CLASS_MAP, TABLE, random_scene

from panoptic import MaskFormerFusion, Queries
from panoptic.export import export_fusion, fusion_graph, pack, run_exported

FLAVORS = ("mask2former", "maskformer", "transformers")


def _fusion(flavor: str, **kw: object) -> MaskFormerFusion:
    return MaskFormerFusion(TABLE, flavor, class_map=CLASS_MAP, **kw)  # type: ignore[arg-type]


def _batch(seed: int, b: int | None = None, max_queries: int = 12) -> tuple[list[Queries], tuple[int, int]]:
    """``b`` images of random queries (unequal counts), all fused at one output size."""
    g = torch.Generator().manual_seed(seed)
    b = b if b is not None else int(torch.randint(1, 4, (), generator=g))
    qs = [Queries(*random_scene(g, max_queries)[:2]) for _ in range(b)]
    size = (int(torch.randint(5, 30, (), generator=g)), int(torch.randint(5, 30, (), generator=g)))
    return qs, size


def test_graph_hand_computed_merge_and_overlap() -> None:
    """Two stuff queries of one category merge under the first; a thing query loses its overlap test."""
    k = len(CLASS_MAP)
    stuff = int(torch.nonzero(~TABLE.isthing_tensor()[CLASS_MAP])[0, 0])
    thing = int(torch.nonzero(TABLE.isthing_tensor()[CLASS_MAP])[0, 0])
    cls = torch.full((4, k + 1), -9.0)
    cls[0, stuff] = cls[1, thing] = cls[2, stuff] = cls[3, k] = 9.0  # query 3: "no object"
    masks = torch.full((4, 4, 4), -9.0)
    masks[0, :2], masks[2, 2:] = 9.0, 9.0
    masks[1, :2, :1] = 8.0  # inside query 0's region, weaker than it: it owns nothing
    fusion = _fusion("mask2former")
    eager = fusion(Queries(cls, masks))[0]
    out = run_exported(fusion_graph(fusion), fusion, Queries(cls, masks))[0]
    assert out.equal(eager)
    assert out.segment_map.tolist() == [[1] * 4] * 4  # queries 0 and 2 merged, numbered by query 0
    assert out.source.tolist() == [0] and out.area.tolist() == [16]



@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("same_category", [True, False])
def test_graph_gives_a_tied_pixel_to_the_first_query(flavor: str, same_category: bool) -> None:
    """Two kept thing queries with equal scores and equal masks: every pixel goes to the first, as in eager."""
    k = len(CLASS_MAP)
    things = torch.nonzero(TABLE.isthing_tensor()[CLASS_MAP])[:, 0]
    cls = torch.full((3, k + 1), -9.0)
    cls[0, int(things[0])] = cls[1, int(things[0] if same_category else things[1])] = 9.0
    cls[2, k] = 9.0  # "no object"
    masks = torch.full((3, 4, 5), -9.0)
    masks[:2, :3] = 9.0
    fusion = _fusion(flavor)
    eager = fusion(Queries(cls, masks))[0]
    out = run_exported(fusion_graph(fusion), fusion, Queries(cls, masks))[0]
    assert out.equal(eager)
    assert out.source.tolist() == [0]  # query 1 owns no pixel, so it is no segment

@pytest.mark.parametrize("flavor", FLAVORS)
def test_graph_equals_eager_on_random_batches(flavor: str) -> None:
    fusion = _fusion(flavor)
    graph = fusion_graph(fusion)
    for seed in range(70):
        qs, size = _batch(seed)
        assert_same_results(fusion(qs, output_size=size), run_exported(graph, fusion, qs, output_size=size))


def test_graph_equals_eager_with_resize_and_fused_labels() -> None:
    fusion = _fusion("transformers", resize_masks_to=(20, 24), label_ids_to_fuse=[0, 1, 5])
    graph = fusion_graph(fusion)
    for seed in range(30):
        qs, _ = _batch(seed)
        assert_same_results(fusion(qs), run_exported(graph, fusion, qs))


def test_batch_without_kept_queries_and_mixed_sizes() -> None:
    fusion = _fusion("mask2former")
    k = len(CLASS_MAP)
    none_kept = Queries(torch.full((3, k + 1), 0.0), torch.zeros(3, 6, 6))  # uniform scores: nothing kept
    qs, _ = _batch(1, b=1)
    out = run_exported(fusion_graph(fusion), fusion, [none_kept, *qs], output_size=(6, 6))
    assert_same_results(fusion([none_kept, *qs], output_size=(6, 6)), out)
    assert out[0].num_segments == 0
    with pytest.raises(ValueError, match="output_size"):
        pack(fusion, [Queries(torch.zeros(1, k + 1), torch.zeros(1, 4, 4)),
                      Queries(torch.zeros(1, k + 1), torch.zeros(1, 5, 5))])
    with pytest.raises(ValueError, match="positive"):
        pack(fusion, qs, output_size=(0, 3))


@pytest.mark.parametrize("flavor", ["mask2former", "transformers"])
def test_exported_program_equals_eager_on_other_shapes(flavor: str) -> None:
    fusion = _fusion(flavor)
    qs, size = _batch(100, b=2)
    program = export_fusion(fusion, qs, output_size=size)
    assert not any(n.target in (torch.ops.aten.nonzero.default, torch.ops.aten.item.default)
                   for n in program.graph.nodes)
    for seed in range(101, 113):  # other batch sizes, query counts and output sizes
        qs, size = _batch(seed)
        assert_same_results(fusion(qs, output_size=size), run_exported(program, fusion, qs, output_size=size))


def test_onnx_runtime_equals_eager() -> None:
    fusion = _fusion("mask2former")
    program = export_fusion(fusion, _batch(200, b=2)[0], output_size=(12, 16))
    batches = [((qs,), {"output_size": size}) for qs, size in map(_batch, range(201, 207))]
    assert_onnx_runtime_equals_eager(program, fusion, batches)


def test_export_command_writes_a_query_program(tmp_path) -> None:
    from panoptic.cli import main
    from panoptic.data import synthetic_categories

    assert main(["export", "--fusion", "maskformer", "--query-flavor", "transformers",
                 "--out", str(tmp_path / "q.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "q.pt2"))
    table = synthetic_categories()
    fusion = MaskFormerFusion(table, "transformers")
    g = torch.Generator().manual_seed(3)
    for n in (1, 4, 9):
        qs = [Queries(torch.randn(n, table.num_classes + 1, generator=g) * 4, torch.randn(n, 7, 9, generator=g) * 3)
              for _ in range(2)]
        assert_same_results(fusion(qs, output_size=(10, 13)), run_exported(program, fusion, qs, output_size=(10, 13)))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_batched_forward_equals_the_per_image_loop(flavor: str) -> None:
    loop, batched = _fusion(flavor), _fusion(flavor, batched=True)
    for seed in range(300, 320):
        qs, size = _batch(seed)
        assert_same_results(loop(qs, output_size=size), batched(qs, output_size=size))
