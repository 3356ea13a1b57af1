"""The kMaX flavours' static-shape graphs (``KMaxGraph``, ``KMaxMaskwiseGraph``) and their exported programs
equal the eager fusion exactly (which the parity tests hold to deeplab2's rules)."""

from __future__ import annotations

import pytest
import torch
from export_checks import assert_onnx_runtime_equals_eager, assert_same_results
from maskformer_refs import CLASS_MAP, TABLE, random_scene

from panoptic import MaskFormerFusion, Queries
from panoptic.export import export_fusion, fusion_graph, run_exported

K = int(CLASS_MAP.numel())
STUFF = int(torch.nonzero(~TABLE.isthing_tensor()[CLASS_MAP])[0, 0])  # a model class of a stuff category
THING = int(torch.nonzero(TABLE.isthing_tensor()[CLASS_MAP])[0, 0])
# (thing / stuff area limits, thresholds): deeplab2's defaults first
SETTINGS = [dict(), dict(thing_area_limit=3, stuff_area_limit=20),
            dict(object_mask_threshold=0.5, mask_threshold=0.2)]


def _fusion(flavor: str, **kw: object) -> MaskFormerFusion:
    return MaskFormerFusion(TABLE, flavor, class_map=CLASS_MAP, **kw)  # type: ignore[arg-type]


def _batch(seed: int, b: int | None = None) -> tuple[list[Queries], tuple[int, int]]:
    """``b`` images of random slots (unequal counts; masks softened so that some pixels are unconfident)."""
    g = torch.Generator().manual_seed(seed)
    b = b if b is not None else int(torch.randint(1, 4, (), generator=g))
    qs = []
    for _ in range(b):
        cls, masks, _ = random_scene(g)
        qs.append(Queries(cls, masks / 4))
    size = (int(torch.randint(5, 30, (), generator=g)), int(torch.randint(5, 30, (), generator=g)))
    return qs, size


def _slots(labels: list[int], masks: torch.Tensor) -> Queries:
    cls = torch.full((len(labels), K + 1), -9.0)
    cls[torch.arange(len(labels)), torch.tensor(labels)] = 9.0
    return Queries(cls, masks)


def test_pixelwise_graph_hand_computed() -> None:
    """Two stuff slots of one category merge under the first; a rejected slot still takes its softmax share."""
    masks = torch.full((4, 1, 4), -9.0)
    masks[0, 0, 0] = masks[2, 0, 1] = masks[1, 0, 2] = 9.0  # stuff, stuff, thing on pixels 0, 1, 2
    masks[3, 0, 3] = 9.0  # slot 3 predicts "no object": rejected, so pixel 3 is no kept slot's
    queries = _slots([STUFF, THING, STUFF, K], masks)
    fusion = _fusion("kmax")
    out = run_exported(fusion_graph(fusion), fusion, [queries, _slots([THING], masks[1:2])])
    assert_same_results(fusion([queries, _slots([THING], masks[1:2])]), out)
    assert out[0].segment_map.tolist() == [[1, 1, 2, 0]]
    assert out[0].source.tolist() == [0, 1] and out[0].area.tolist() == [2, 1]
    assert out[1].segment_map.tolist() == [[1, 1, 1, 1]]  # one slot: its softmax is 1 everywhere



def test_pixelwise_graph_gives_a_tied_pixel_to_the_first_slot() -> None:
    """Two thing slots with equal mask logits everywhere: the first owns every pixel, as in eager."""
    things = torch.nonzero(TABLE.isthing_tensor()[CLASS_MAP])[:, 0]
    masks = torch.full((2, 2, 3), 9.0)
    queries = _slots([int(things[0]), int(things[1])], masks)
    fusion = _fusion("kmax", mask_threshold=0.2)  # each slot's softmax share is 0.5
    out = run_exported(fusion_graph(fusion), fusion, [queries])[0]
    assert_same_results(fusion([queries]), [out])
    assert out.segment_map.tolist() == [[1] * 3] * 2 and out.source.tolist() == [0]

def test_maskwise_graph_hand_computed() -> None:
    """The paste keeps the first of two overlapping slots (paste order), the second loses its overlap test."""
    masks = torch.full((2, 1, 4), -9.0)
    masks[0, 0, :3] = 9.0
    masks[1, 0, 1:] = 9.5  # wins the softmax on pixels 1, 2, 3: its binary mask covers them
    queries = _slots([THING, THING], masks)
    fusion = _fusion("kmax_maskwise")
    out = run_exported(fusion_graph(fusion), fusion, [queries])[0]
    assert_same_results(fusion([queries]), [out])
    assert out.segment_map.tolist() == [[1, 2, 2, 2]] and out.source.tolist() == [0, 1]


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_graph_equals_eager_on_random_batches(flavor: str, setting: int) -> None:
    fusion = _fusion(flavor, **SETTINGS[setting])  # type: ignore[arg-type]
    graph = fusion_graph(fusion)
    segments = images = empty = 0
    for seed in range(60 if setting == 0 else 20):
        qs, size = _batch(seed)
        eager = fusion(qs, output_size=size)
        assert_same_results(eager, run_exported(graph, fusion, qs, output_size=size))
        segments += sum(r.num_segments for r in eager)
        empty += sum(r.num_segments == 0 for r in eager)
        images += len(eager)
    assert segments > 1.5 * images and empty < images // 3  # the cases exercise the rule


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
def test_images_without_slots_or_kept_slots(flavor: str) -> None:
    fusion = _fusion(flavor)
    rejected = Queries(torch.zeros(3, K + 1), torch.randn(3, 6, 6))  # uniform classes: nothing passes 0.7
    no_slots = Queries(torch.zeros(0, K + 1), torch.zeros(0, 6, 6))
    qs, _ = _batch(5, b=1)
    batch = [rejected, *qs, no_slots]
    out = run_exported(fusion_graph(fusion), fusion, batch, output_size=(6, 6))
    assert_same_results(fusion(batch, output_size=(6, 6)), out)
    assert out[0].num_segments == 0 and out[2].num_segments == 0 and out[1].num_segments > 0


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
def test_exported_program_equals_eager_on_other_shapes(flavor: str) -> None:
    fusion = _fusion(flavor, thing_area_limit=2, stuff_area_limit=8)
    qs, size = _batch(100, b=2)
    program = export_fusion(fusion, qs, output_size=size)
    assert not any(n.target in (torch.ops.aten.nonzero.default, torch.ops.aten.item.default)
                   for n in program.graph.nodes)
    for seed in range(101, 113):  # other batch sizes, slot counts and output sizes
        qs, size = _batch(seed)
        assert_same_results(fusion(qs, output_size=size), run_exported(program, fusion, qs, output_size=size))


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
def test_onnx_runtime_equals_eager(flavor: str) -> None:
    fusion = _fusion(flavor, stuff_area_limit=8)
    program = export_fusion(fusion, _batch(200, b=2)[0], output_size=(12, 16))
    batches = [((qs,), {"output_size": size}) for qs, size in map(_batch, range(201, 207))]
    assert_onnx_runtime_equals_eager(program, fusion, batches)


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
def test_export_command_writes_a_kmax_program(tmp_path, flavor: str) -> None:
    from panoptic.cli import main
    from panoptic.data import synthetic_categories

    assert main(["export", "--fusion", "maskformer", "--query-flavor", flavor, "--out", str(tmp_path / "k.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "k.pt2"))
    table = synthetic_categories()
    fusion = MaskFormerFusion(table, flavor)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(3)
    for n in (1, 4, 9):
        qs = [Queries(torch.randn(n, table.num_classes + 1, generator=g) * 4, torch.randn(n, 7, 9, generator=g) * 3)
              for _ in range(2)]
        assert_same_results(fusion(qs, output_size=(10, 13)), run_exported(program, fusion, qs, output_size=(10, 13)))


@pytest.mark.parametrize("flavor", ["kmax", "kmax_maskwise"])
def test_batched_forward_equals_the_per_image_loop(flavor: str) -> None:
    loop, batched = _fusion(flavor, stuff_area_limit=8), _fusion(flavor, stuff_area_limit=8, batched=True)
    for seed in range(300, 320):
        qs, size = _batch(seed)
        assert_same_results(loop(qs, output_size=size), batched(qs, output_size=size))
