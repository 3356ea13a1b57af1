"""The static-shape UPSNet and heuristic graphs and their ``torch.export`` programs equal the eager fusions exactly."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_table
from hypothesis import given, settings
from hypothesis import strategies as st

from panoptic import Instances, ops
from panoptic.categories import CategoryTable
from panoptic.data import synthetic_categories
from panoptic.export import assemble_results, export_fusion, fusion_graph, pack, run_exported
from panoptic.fusion import HeuristicFusion, PruningConfig, UPSNetFusion
from panoptic.fusion.upsnet_graph import UPSNetGraph

TABLE = tiny_table(3, 3)
SYNTHETIC = synthetic_categories()


def _graph(**kw) -> UPSNetGraph:
    cfg = {"unknown": True, "class_assignment": "detector", "assignment_threshold": 0.5, "stuff_area_limit": 0}
    cfg.update(kw)
    return UPSNetGraph(torch.tensor([False, True]), **cfg)


def _one_instance_batch(stuff_row0: list[float], mask: float, thing_10: float):
    """1 stuff + 1 thing channel, 2x3 image, one instance with crop box row 0, columns 0-1."""
    sem = torch.tensor([[[stuff_row0, [1.0, 1.0, 1.0]], [[3.0, 3.0, 0.0], [thing_10, 0.0, 0.0]]]])
    crop = torch.tensor([[[0, 1, 0, 2]]])
    masks = torch.tensor([[[[mask, mask, 0.0], [0.0, 0.0, 0.0]]]])
    return sem, crop, masks, torch.tensor([[0]]), torch.tensor([[0.9]]), torch.tensor([[True]])


def test_graph_hand_computed_unknown() -> None:
    # Z = 3.5 in the crop box beats stuff 1; at (1, 0) U = 4 - 0 beats Z = 0 and stuff 1: unknown, void.
    seg, unk, cat, score, area, slot = _graph()(*_one_instance_batch([1.0, 1.0, 1.0], 0.5, 4.0))
    assert seg.tolist() == [[[2, 2, 1], [0, 1, 1]]]
    assert unk.tolist() == [[[False, False, False], [True, False, False]]]
    assert cat.tolist() == [[0, 1]] and area.tolist() == [[3, 2]] and slot.tolist() == [[-1, 0]]
    assert score[0, 1].item() == pytest.approx(0.9) and score[0, 0].isnan()


@pytest.mark.parametrize(("rule", "expected", "areas"), [("heuristic", [[1, 1, 1], [1, 1, 1]], [6, 2]),
                                                          ("detector", [[2, 2, 1], [1, 1, 1]], [4, 2])])
def test_graph_hand_computed_class_assignment(rule: str, expected: list, areas: list) -> None:
    # The instance wins its two pixels (3 + 10 > 5) whose semantic argmax is the stuff class (5 > 3): the
    # heuristic moves them to the stuff segment (frequency 1 > 0.5); the detector rule keeps the instance.
    seg, _, _, _, area, _ = _graph(class_assignment=rule)(*_one_instance_batch([5.0, 5.0, 1.0], 10.0, 0.0))
    assert seg.tolist() == [expected]
    assert area[0, 0].item() == areas[0] and area[0, 1].item() == (0 if rule == "heuristic" else areas[1])


def _random_instances(g: torch.Generator, n: int, h: int, w: int, roi: bool = True,
                      table: CategoryTable = TABLE) -> Instances:
    x1 = torch.rand(n, generator=g) * (w + 2) - 1
    y1 = torch.rand(n, generator=g) * (h + 2) - 1
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=g) * w, y1 + torch.rand(n, generator=g) * h], 1)
    masks = torch.randn(n, 5, 5, generator=g) * 3 if roi else torch.randn(n, h, w, generator=g) * 3
    scores = (torch.rand(n, generator=g) * 4).round() / 4  # ties in the pruning's visit order
    return Instances(boxes, scores, torch.randint(0, table.num_things, (n,), generator=g), masks,
                     mask_space="roi" if roi else "image")


def _random_batch(seed: int, max_side: int = 14, max_n: int = 6, roi: bool = True, table: CategoryTable = TABLE):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 4, (), generator=g))
    h, w = (int(v) for v in torch.randint(2, max_side, (2,), generator=g))
    sem = torch.randn(b, table.num_classes, h, w, generator=g) * 3
    if seed % 2:  # integer logits: exact ties everywhere
        sem = sem.round()
    inst = [_random_instances(g, int(torch.randint(0, max_n + 1, (), generator=g)), h, w, roi, table)
            for _ in range(b)]
    return sem, inst


def _assert_same(eager, other) -> None:
    assert len(eager) == len(other)
    for a, b in zip(eager, other, strict=True):
        assert a.equal(b), (a, b)


def _assert_onnx_equals_eager(session, fusion) -> None:
    """ONNX Runtime's outputs, assembled, equal the eager fusion on 6 random batches (integer logits included)."""
    for seed in range(6):
        sem, inst = _random_batch(seed, max_side=20, max_n=7, table=SYNTHETIC)
        packed = pack(fusion, sem, inst)
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), packed.args, strict=True)}
        outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
        _assert_same(fusion(sem, inst), assemble_results(fusion, packed, outputs))


FUSIONS = [
    {"class_assignment": "heuristic", "unknown": True, "stuff_area_limit": 6},
    {"class_assignment": "semantic", "unknown": True, "stuff_area_limit": 0},
    {"class_assignment": "detector", "unknown": False, "stuff_area_limit": 10},
    {"class_assignment": "heuristic", "unknown": False, "stuff_area_limit": 0, "assignment_threshold": 0.25},
]


@pytest.mark.parametrize("cfg", FUSIONS)
def test_graph_equals_eager_on_random_batches(cfg: dict, ops_backend: str) -> None:
    """Hundreds of random batches with unequal N (0 included), ROI and full-image masks, every rule."""
    fusion = UPSNetFusion(TABLE, pruning=PruningConfig(score_threshold=0.1, overlap_threshold=0.6), **cfg)
    graph = fusion_graph(fusion)
    batched = UPSNetFusion(TABLE, pruning=fusion.pruning, batched=True, **cfg)
    for seed in range(40):
        sem, inst = _random_batch(seed, roi=seed % 3 != 0)
        eager = fusion(sem, inst)
        _assert_same(eager, run_exported(graph, fusion, sem, inst))
        if seed % 4 == 0:  # the same graph behind forward
            _assert_same(eager, batched(sem, inst))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(FUSIONS))
def test_graph_equals_eager_property(seed: int, cfg: dict) -> None:
    fusion = UPSNetFusion(TABLE, pruning=PruningConfig(score_threshold=0.0, nms_iou=None, overlap_threshold=None),
                          **cfg)
    sem, inst = _random_batch(seed, max_side=10, max_n=8)
    out = run_exported(fusion_graph(fusion), fusion, sem, inst, output_size=(sem.shape[2] + 1, sem.shape[3]))
    _assert_same(fusion(sem, inst, output_size=(sem.shape[2] + 1, sem.shape[3])), out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One ``panoptic export`` run (the slow part: ~10 s, ~25 s with ONNX, on a busy CPU): the program, as loaded
    from its ``.pt2``, its fusion, and the ONNX file (``None`` without onnxscript)."""
    from panoptic.cli import main

    folder = tmp_path_factory.mktemp("export")
    onnx_path = folder / "fusion.onnx" if importlib.util.find_spec("onnxscript") else None
    args = ["export", "--out", str(folder / "fusion.pt2"), "--stuff-area-limit", "16"]
    assert main(args + (["--onnx", str(onnx_path)] if onnx_path else [])) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(["fusion.pt2"] + (["fusion.onnx"] if onnx_path else []))
    fusion = UPSNetFusion(SYNTHETIC, stuff_area_limit=16)
    return fusion, torch.export.load(str(folder / "fusion.pt2")), onnx_path


def test_exported_program_is_dynamic_and_equals_eager(exported) -> None:
    fusion, program, _ = exported
    assert isinstance(program, torch.export.ExportedProgram)
    seen = set()
    for seed in range(25):  # other batch sizes, sizes and instance counts than the example's (2 x 24 x 32, N 3, 5)
        sem, inst = _random_batch(seed, max_side=24, max_n=9, table=SYNTHETIC)
        seen.add((sem.shape[0], tuple(sem.shape[2:])))
        _assert_same(fusion(sem, inst), run_exported(program, fusion, sem, inst))
    assert len(seen) > 20


def test_exported_program_without_instances_and_unequal_counts(exported) -> None:
    fusion, program, _ = exported
    g = torch.Generator().manual_seed(5)
    sem = torch.randn(3, SYNTHETIC.num_classes, 9, 7, generator=g)
    for counts in ([0, 0, 0], [0, 7, 1]):
        inst = [_random_instances(g, n, 9, 7, table=SYNTHETIC) for n in counts]
        for i in range(3):
            inst[i] = Instances(inst[i].boxes, inst[i].scores + 0.5, inst[i].labels, inst[i].mask_logits)
        _assert_same(fusion(sem, inst), run_exported(program, fusion, sem, inst))




@pytest.mark.parametrize("rule", ["heuristic", "detector", "semantic"])
def test_graph_with_a_table_without_thing_classes(rule: str) -> None:
    """Only stuff categories (no thing channel to read): the graph equals eager (it raised an index error before)."""
    table = CategoryTable.from_coco([{"id": 1, "isthing": 0}, {"id": 2, "isthing": 0}, {"id": 3, "isthing": 0}])
    fusion = UPSNetFusion(table, stuff_area_limit=0, class_assignment=rule)
    sem = torch.randn(2, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    eager = fusion(sem, [Instances.empty(), Instances.empty()])
    _assert_same(eager, run_exported(fusion_graph(fusion), fusion, sem, [Instances.empty(), Instances.empty()]))
    assert sum(int(r.area.sum()) for r in eager) == 2 * 8 * 9


@pytest.mark.parametrize("unknown", [True, False])
def test_graph_with_a_table_without_stuff_classes(unknown: bool) -> None:
    """Only thing categories: an image without instances is all unknown with the unknown channel and all void
    without it (the graph marked it unknown either way before); an image with instances equals eager too."""
    table = CategoryTable.from_coco([{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}])
    fusion = UPSNetFusion(table, stuff_area_limit=0, unknown=unknown,
                          pruning=PruningConfig(score_threshold=0.1, overlap_threshold=None))
    g = torch.Generator().manual_seed(3)
    sem = torch.randn(2, 2, 8, 9, generator=g)
    inst = [Instances.empty(), _random_instances(g, 3, 8, 9, table=table)]
    eager = fusion(sem, inst)
    _assert_same(eager, run_exported(fusion_graph(fusion), fusion, sem, inst))
    assert eager[0].num_segments == 0 and int(eager[0].unknown_mask.sum()) == (8 * 9 if unknown else 0)


@pytest.mark.parametrize("kind", ["upsnet", "heuristic"])
def test_channels_last_logits_give_the_contiguous_results_in_every_path(kind: str) -> None:
    """Channels-last logits (a convolutional model's fast layout): eager, logits that require grad and the exported
    path equal the eager results of the contiguous logits bit for bit (the exported path's and the differentiable
    stuff scores summed the channels in another order, an ulp apart, before)."""
    if kind == "upsnet":
        fusion = UPSNetFusion(TABLE, stuff_area_limit=3, pruning=PruningConfig(score_threshold=0.1))
    else:
        fusion = HeuristicFusion(TABLE, stuff_area_limit=3)
    graph = fusion_graph(fusion)
    for seed in range(0, 24, 2):  # real-valued logits: their scores are not round numbers
        sem, inst = _random_batch(seed, max_side=30, max_n=8)
        channels_last = sem.contiguous(memory_format=torch.channels_last)
        eager = fusion(sem, inst)
        _assert_same(eager, fusion(channels_last, inst))
        _assert_same(eager, run_exported(graph, fusion, channels_last, inst))
        if kind == "upsnet":  # logits that require grad take the differentiable stuff scores, from the same grid
            for a, b in zip(eager, fusion(channels_last.clone().requires_grad_(True), inst), strict=True):
                assert torch.equal(a.score.nan_to_num(-1.0), b.score.detach().nan_to_num(-1.0))


def test_run_exported_builds_the_program_module_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module of an ExportedProgram (about 30 ms to build) is built on the first call only, and the cache
    does not keep the program alive."""
    import gc
    import weakref

    fusion = UPSNetFusion(TABLE)
    sem, inst = _random_batch(3, max_side=10, max_n=4)
    program = export_fusion(fusion, sem, inst)
    built = []
    build = torch.export.ExportedProgram.module

    def counted(self: torch.export.ExportedProgram) -> torch.nn.Module:
        built.append(1)
        return build(self)

    monkeypatch.setattr(torch.export.ExportedProgram, "module", counted)
    for seed in range(3):
        sem, inst = _random_batch(seed, max_side=10, max_n=4)
        _assert_same(fusion(sem, inst), run_exported(program, fusion, sem, inst))
    assert len(built) == 1
    alive = weakref.ref(program)
    del program
    gc.collect()
    assert alive() is None

def test_exported_graph_holds_the_whole_per_pixel_path(exported) -> None:
    """The CPU stand-in for "no host syncs": one graph from logits to the id map, with no data-dependent ops."""
    _, program, _ = exported
    ops_used = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("argmax" in o or "max.dim" in o for o in ops_used), ops_used
    assert any("scatter_add" in o for o in ops_used)
    aten_ops = {o.split(".")[1] for o in ops_used if o.startswith("aten.")}  # "aten.max.dim" -> "max"
    assert not aten_ops & {"nonzero", "item", "_local_scalar_dense", "masked_select", "index"}, aten_ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_on_cuda_equals_the_loop_and_the_graph_never_syncs() -> None:
    fusion, batched = UPSNetFusion(SYNTHETIC, stuff_area_limit=16), UPSNetFusion(SYNTHETIC, stuff_area_limit=16,
                                                                                 batched=True)
    for seed in range(10):
        sem, inst = _random_batch(seed, max_side=40, max_n=12, table=SYNTHETIC)
        sem, inst = sem.cuda(), [i.to("cuda") for i in inst]
        _assert_same(fusion(sem, inst), batched(sem, inst))
        packed = pack(batched, sem, inst)
        graph = fusion_graph(batched)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside the graph raises
        try:
            graph(*packed.args)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_export_refuses_other_fusions_with_a_clear_error() -> None:
    from panoptic.fusion import PanopticFusion

    class Own(PanopticFusion):  # a user's fusion: no static-shape graph
        def fuse_image(self, semantic_logits, instances):
            raise NotImplementedError

    fusion = Own(TABLE)
    sem = torch.zeros(1, TABLE.num_classes, 4, 4)
    with pytest.raises(ValueError, match="export supports UPSNetFusion, HeuristicFusion, MaskFormerFusion and "
                                         "CentreOffsetFusion; Own has no static-shape graph"):
        export_fusion(fusion, sem, [Instances.empty()])
    with ops.backend("torch"), pytest.raises(ValueError, match="Own has no static-shape graph"):
        run_exported(torch.nn.Identity(), fusion, sem, [Instances.empty()])


# ----------------------------------------------------------------------------------------- HeuristicFusion
HEURISTIC = [
    {"flavor": "panopticapi", "stuff_area_limit": 6},
    {"flavor": "detectron2", "stuff_area_limit": 0},
    {"flavor": "mmdet", "stuff_area_limit": 10},
    {"flavor": "upsnet", "stuff_area_limit": 8},
    {"flavor": "detectron2", "stuff_area_limit": 4, "semantic_layout": "detectron2"},
]


def test_heuristic_graph_hand_computed() -> None:
    """2 stuff + 1 thing channel, 2x3 image; slot 0 paints (0, 0) and (0, 1), slot 1 paints nothing.

    Semantic argmax: row 0 = thing, thing, stuff 1; row 1 = stuff 0, stuff 0, thing. With the area limit 2
    after pasting, stuff 0 (2 pixels) stays, stuff 1 (1 pixel) goes void, (1, 2) is an unpainted thing pixel:
    void. Measured before pasting ("upsnet"), stuff 1 still has 1 pixel: void too.
    """
    from panoptic.fusion.heuristic_graph import HeuristicGraph

    sem = torch.tensor([[[[0.0, 0.0, 0.0], [5.0, 5.0, 0.0]],
                         [[0.0, 0.0, 5.0], [0.0, 0.0, 0.0]],
                         [[5.0, 5.0, 0.0], [0.0, 0.0, 5.0]]]])
    paint = torch.tensor([[[0, 0, -1], [-1, -1, -1]]])
    labels, scores = torch.tensor([[0, 0]]), torch.tensor([[0.9, 0.8]])
    for before in (False, True):
        seg, unk, cat, score, area, slot = HeuristicGraph(2, 2, before)(sem, paint, labels, scores)
        assert seg.tolist() == [[[1, 1, 0], [2, 2, 0]]] and not unk.any()
        assert cat.tolist() == [[2, 2, 0, 1]] and area.tolist() == [[2, 0, 2, 0]] and slot.tolist() == [[0, 1, -1, -1]]
        assert score[0, :2].tolist() == pytest.approx([0.9, 0.8]) and score[0, 2:].isnan().all()
    # Before pasting stuff 0 counts its painted pixel too (2 pixels, 1 unpainted): limit 2 keeps it only then.
    paint = torch.tensor([[[-1, -1, -1], [0, -1, -1]]])
    seg_after = HeuristicGraph(2, 2, False)(sem, paint, labels, scores)[0]
    seg_before = HeuristicGraph(2, 2, True)(sem, paint, labels, scores)[0]
    assert seg_after.tolist() == [[[0, 0, 0], [1, 0, 0]]] and seg_before.tolist() == [[[0, 0, 0], [1, 2, 0]]]


@pytest.mark.parametrize("cfg", HEURISTIC)
def test_heuristic_graph_equals_eager_on_random_batches(cfg: dict, ops_backend: str) -> None:
    """Random batches with unequal N (0 included), ROI and full-image masks, ties in scores and logits."""
    fusion = HeuristicFusion(TABLE, score_threshold=0.3, **cfg)
    graph = fusion_graph(fusion)
    for seed in range(40):
        sem, inst = _random_batch(seed, roi=seed % 3 != 0)
        if cfg.get("semantic_layout") == "detectron2":
            sem = sem[:, :TABLE.num_stuff + 1]
        _assert_same(fusion(sem, inst), run_exported(graph, fusion, sem, inst))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(HEURISTIC[:4]))
def test_heuristic_graph_equals_eager_property(seed: int, cfg: dict) -> None:
    fusion = HeuristicFusion(TABLE, score_threshold=float("-inf"), **cfg)
    sem, inst = _random_batch(seed, max_side=10, max_n=8)
    size = (sem.shape[2] + 1, sem.shape[3])
    _assert_same(fusion(sem, inst, output_size=size),
                 run_exported(fusion_graph(fusion), fusion, sem, inst, output_size=size))


def test_heuristic_graph_equals_eager_on_a_large_image() -> None:
    """300x260: the stuff scores come from a sampled grid (stride 2), read from the same pixels as eager."""
    g = torch.Generator().manual_seed(3)
    sem = torch.randn(1, SYNTHETIC.num_classes, 300, 260, generator=g)
    inst = [_random_instances(g, 6, 300, 260, table=SYNTHETIC)]
    for flavor in ("panopticapi", "upsnet"):
        fusion = HeuristicFusion(SYNTHETIC, flavor, stuff_area_limit=16, score_threshold=0.0)
        _assert_same(fusion(sem, inst), run_exported(fusion_graph(fusion), fusion, sem, inst))


def test_heuristic_exported_program_and_onnx_equal_eager() -> None:
    """One export (and one ONNX conversion, ~30 s on a busy CPU) per run: other batch sizes, image sizes and
    instance counts than the example's, N = 0 included; ONNX Runtime on integer logits (ties) too."""
    fusion = HeuristicFusion(SYNTHETIC, "upsnet", stuff_area_limit=16)
    g = torch.Generator().manual_seed(0)
    sem = torch.randn(2, SYNTHETIC.num_classes, 24, 32, generator=g)
    program = export_fusion(fusion, sem, [_random_instances(g, n, 24, 32, table=SYNTHETIC) for n in (3, 5)])
    ops_used = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "aten.max.dim" in ops_used and any("scatter_add" in o for o in ops_used)  # max.dim: the argmax
    aten_ops = {o.split(".")[1] for o in ops_used if o.startswith("aten.")}  # "aten.max.dim" -> "max"
    assert not aten_ops & {"nonzero", "item", "_local_scalar_dense", "masked_select", "index"}, aten_ops
    seen = set()
    for seed in range(15):
        sem, inst = _random_batch(seed, max_side=24, max_n=9, table=SYNTHETIC)
        seen.add((sem.shape[0], tuple(sem.shape[2:])))
        _assert_same(fusion(sem, inst), run_exported(program, fusion, sem, inst))
    assert len(seen) > 10
    empty = [Instances.empty(), _random_instances(g, 4, 9, 7, table=SYNTHETIC)]
    sem = torch.randn(2, SYNTHETIC.num_classes, 9, 7, generator=g)
    _assert_same(fusion(sem, empty), run_exported(program, fusion, sem, empty))
    if not importlib.util.find_spec("onnxscript"):
        return
    ort = pytest.importorskip("onnxruntime")
    proto = torch.onnx.export(program, (), dynamo=True, verbose=False).model_proto.SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    _assert_onnx_equals_eager(session, fusion)


def test_export_command_writes_a_heuristic_program(tmp_path) -> None:
    from panoptic.cli import main

    assert main(["export", "--fusion", "heuristic", "--flavor", "detectron2", "--stuff-area-limit", "8",
                 "--out", str(tmp_path / "h.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "h.pt2"))
    fusion = HeuristicFusion(SYNTHETIC, "detectron2", stuff_area_limit=8)
    for seed in range(4):
        sem, inst = _random_batch(seed, max_side=20, max_n=7, table=SYNTHETIC)
        _assert_same(fusion(sem, inst), run_exported(program, fusion, sem, inst))


def test_onnx_file_runs_in_onnxruntime_like_eager(exported) -> None:
    """The ONNX file (dynamo exporter) run by ONNX Runtime on other shapes, integer logits (ties) included."""
    fusion, _, path = exported
    if path is None:
        pytest.skip("onnxscript is not installed")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _assert_onnx_equals_eager(session, fusion)


def test_export_command_reports_a_bad_categories_file_in_one_line(tmp_path, capsys) -> None:
    from panoptic.cli import main

    assert main(["export", "--out", str(tmp_path / "f.pt2"), "--categories", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err
    assert not (tmp_path / "f.pt2").exists()
