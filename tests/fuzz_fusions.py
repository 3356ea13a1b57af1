"""Differential fuzzing of the fusions: every pair of paths that must agree, on random inputs, for as long as asked.

    python tests/fuzz_fusions.py --seconds 600            # all checks, round robin, until the time is up
    python tests/fuzz_fusions.py --only layouts --seed 41 --cases 1   # replay one case

Each ``check_<name>(seed)`` builds one random case from ``seed`` and raises on a disagreement:

- ``instances``: ``UPSNetFusion`` (every class-assignment rule, with and without the unknown channel, random
  pruning) and ``HeuristicFusion`` (every flavour) on random category tables (0-30 stuff classes, so both sides of
  the 24-channel argmax switch; 1-8 things), sizes, instance counts (0 included) and tied logits: the C passes, the
  torch specification and the exported graph (``run_exported``) give equal results, and UPSNet's panoptic argmax
  equals the dense ``panoptic_logits(...).argmax(0)``.
- ``queries``: ``MaskFormerFusion`` (five flavours) and ``CentreOffsetFusion`` (two), the same three paths.
- ``layouts``: transposed and channels-last logits, transposed masks, boxes, queries and centre inputs, float16 /
  bfloat16 / float64 logits, resized outputs: the three paths agree, and a float32 layout changes nothing.
- ``errors``: malformed inputs (dtypes, shapes, NaN / inf, out-of-range labels, bad sizes) either fuse or raise
  ``ValueError`` / ``TypeError``; any other exception is a missing check at the boundary.
- ``imports``: the same for the importers of the exchange formats (COCO-panoptic ids and ``segments_info``,
  (category, instance) pairs, label-divisor maps).

It found (all fixed, each with a test): the UPSNet graph marking "no channel at all" unknown without the unknown
channel; channels-last logits moving stuff scores by an ulp in the exported path; a transposed label map crashing
``CentreOffsetFusion``. It also catches the importer errors fixed with it (a zero ``label_divisor`` and
``segments_info`` entries without their keys raising raw errors). ``tests/test_fuzz_fusions.py`` runs a few cases
of every check in the test suite.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the test helpers, when run as a script

import test_export_centres as centre_cases
import test_export_kmax as kmax_cases
import test_export_queries as query_cases
from conftest import tiny_table
from export_checks import assert_same_results
from maskformer_refs import CLASS_MAP
from maskformer_refs import TABLE as QUERY_TABLE
from test_export import _random_instances

from panoptic import CategoryTable, CentreOffsetFusion, CentreOffsets, Instances, MaskFormerFusion, Queries, ops
from panoptic.export import fusion_graph, run_exported
from panoptic.formats import from_coco, from_label_divisor, from_pairs
from panoptic.fusion import HeuristicFusion, UPSNetFusion
from panoptic.fusion.base import prepare_instances
from panoptic.fusion.pruning import PruningConfig

HEURISTIC_FLAVORS = ("panopticapi", "detectron2", "mmdet", "upsnet")
QUERY_FLAVORS = ("mask2former", "maskformer", "transformers", "kmax", "kmax_maskwise")


def three_paths(fusion: torch.nn.Module, *args: object, **kwargs: object) -> None:
    """The C passes, the torch specification and the exported graph give equal results."""
    with ops.backend("native"):
        native = fusion(*args, **kwargs)
    with ops.backend("torch"):
        assert_same_results(native, fusion(*args, **kwargs))
    assert_same_results(native, run_exported(fusion_graph(fusion), fusion, *args, **kwargs))


def transposed(t: torch.Tensor) -> torch.Tensor:
    """The same values stored column-major in the last two dimensions (a non-contiguous view)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.ndim >= 2 else t.flip(0).contiguous().flip(0)


def random_logits(g: torch.Generator, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Real-valued, integer (ties everywhere) or half-integer logits."""
    x = torch.randn(shape, generator=g) * 3
    return (x, x.round(), (x / 3).round() * 0.5)[seed % 3]


def upsnet_fusion(table, seed: int, g: torch.Generator) -> UPSNetFusion:
    return UPSNetFusion(table, class_assignment=("heuristic", "semantic", "detector")[seed % 3],
                        unknown=seed % 5 != 0, stuff_area_limit=int(torch.randint(0, 20, (), generator=g)),
                        pruning=PruningConfig(score_threshold=0.1, overlap_threshold=(0.3, 0.6, None)[seed % 3],
                                              nms_iou=(0.5, None)[seed % 2]))


def random_batch(seed: int, max_stuff: int, max_things: int, max_side: int, max_n: int,
                 roi: bool) -> tuple[torch.Generator, CategoryTable, torch.Tensor, list[Instances]]:
    """A random category table, a batch of 1-2 images' logits ``(B, C, H, W)`` and their instances (0 included),
    and the generator to draw more from."""
    g = torch.Generator().manual_seed(seed)
    table = tiny_table(int(torch.randint(0, max_stuff + 1, (), generator=g)),
                       int(torch.randint(1, max_things + 1, (), generator=g)))
    b = int(torch.randint(1, 3, (), generator=g))
    h, w = (int(v) for v in torch.randint(2, max_side, (2,), generator=g))
    sem = random_logits(g, (b, table.num_classes, h, w), seed)
    inst = [_random_instances(g, int(torch.randint(0, max_n + 1, (), generator=g)), h, w, roi, table)
            for _ in range(b)]
    return g, table, sem, inst


def check_instances(seed: int) -> None:
    g, table, sem, inst = random_batch(seed, 30, 8, 70, 24, roi=seed % 4 != 0)
    b, h, w = sem.shape[0], sem.shape[2], sem.shape[3]
    fusion = upsnet_fusion(table, seed, g)
    three_paths(fusion, sem, inst)
    for i in range(b):
        if len(inst[i]):
            local = prepare_instances(inst[i], table, (h, w), sem.device)
            dense = fusion.panoptic_logits(sem[i], local).argmax(0)
            for backend in ("native", "torch"):
                with ops.backend(backend):
                    assert torch.equal(fusion.panoptic_argmax(sem[i], local), dense), f"argmax, {backend}"
    heuristic = HeuristicFusion(table, flavor=HEURISTIC_FLAVORS[seed % 4],
                                stuff_area_limit=int(torch.randint(0, 20, (), generator=g)))
    three_paths(heuristic, sem, inst)


def query_fusion(seed: int) -> tuple[MaskFormerFusion, list[Queries], tuple[int, int]]:
    flavor = QUERY_FLAVORS[seed % 5]
    if flavor.startswith("kmax"):
        queries, size = kmax_cases._batch(seed)
        return kmax_cases._fusion(flavor, **kmax_cases.SETTINGS[seed % 3]), queries, size
    queries, size = query_cases._batch(seed, max_queries=20)
    return query_cases._fusion(flavor), queries, size


def centre_fusion(seed: int) -> tuple[CentreOffsetFusion, list[CentreOffsets]]:
    images, params = centre_cases._batch(seed, labels=seed % 3 == 0)
    return CentreOffsetFusion(centre_cases.TABLE, flavor=("detectron2", "deeplab2")[seed % 2], **params), images


def check_queries(seed: int) -> None:
    fusion, queries, size = query_fusion(seed)
    three_paths(fusion, queries, output_size=size)
    fusion, images = centre_fusion(seed)
    three_paths(fusion, images)


def check_layouts(seed: int) -> None:
    resize = seed % 4 == 1
    # image-space masks come at the output size, so a resized batch has ROI masks
    g, table, base, inst = random_batch(seed, 5, 4, 40, 9, roi=seed % 3 != 0 or resize)
    size = (int(torch.randint(2, 50, (), generator=g)), int(torch.randint(2, 50, (), generator=g))) if resize else None
    layout = (seed // 3) % 6  # independent of the kind of logits (seed % 3)
    sem = (transposed(base), base.contiguous(memory_format=torch.channels_last), base.half(), base.double(),
           base.bfloat16(), base)[layout]
    if layout == 5:  # float32 logits, the instances' tensors transposed
        inst = [Instances(transposed(i.boxes), transposed(i.scores), transposed(i.labels).int(),
                          transposed(i.mask_logits), mask_space=i.mask_space) for i in inst]
    heuristic = HeuristicFusion(table, flavor=HEURISTIC_FLAVORS[seed % 4],
                                stuff_area_limit=int(torch.randint(0, 20, (), generator=g)))  # stuff segments survive
    for fusion in (upsnet_fusion(table, seed, g), heuristic):
        three_paths(fusion, sem, inst, output_size=size)
        if layout in (0, 1, 5):
            contiguous = [Instances(i.boxes.contiguous(), i.scores.contiguous(), i.labels.contiguous(),
                                    i.mask_logits.contiguous(), mask_space=i.mask_space) for i in inst]
            assert_same_results(fusion(sem, inst, output_size=size), fusion(base, contiguous, output_size=size))
    fusion, queries, qsize = query_fusion(seed)
    moved = [Queries(transposed(q.class_logits), transposed(q.mask_logits)) for q in queries]
    three_paths(fusion, moved, output_size=qsize)
    assert_same_results(fusion(queries, output_size=qsize), fusion(moved, output_size=qsize))
    fusion, images = centre_fusion(seed)
    moved = [(CentreOffsets if x.semantic.is_floating_point() else CentreOffsets.from_labels)(
        transposed(x.semantic), transposed(x.centre_heatmap), transposed(x.offsets)) for x in images]
    three_paths(fusion, moved)
    assert_same_results(fusion(images), fusion(moved))


def malformed_instances(r: random.Random, table) -> tuple[torch.Tensor, dict, tuple | None]:
    """Logits and Instances fields with one random defect (or none)."""
    h, w, k = r.choice([1, 2, 5, 9]), r.choice([1, 3, 7]), r.choice([0, 1, 3])
    sem = torch.randn(1, table.num_classes, h, w)
    f = dict(boxes=torch.rand(k, 4) * 10, scores=torch.rand(k), labels=torch.randint(0, table.num_things, (k,)),
             mask_logits=torch.randn(k, 4, 4), mask_space="roi")
    size = None
    defect = r.randrange(24)
    if defect == 0:
        sem = sem.long()
    elif defect == 1:
        sem = sem[0]
    elif defect == 2:
        sem[0, 0, 0, 0] = r.choice([float("nan"), float("inf"), float("-inf")])
    elif defect == 3:
        sem = sem * 1e38
    elif defect == 4 and k:
        f["boxes"][0, r.randrange(4)] = r.choice([float("nan"), float("inf"), -1e30])
    elif defect == 5:
        f["boxes"] = f["boxes"][:, r.choice([[0, 1, 2], [2, 3, 0, 1]])]
    elif defect == 6:
        f["boxes"] = f["boxes"].long()
    elif defect == 7 and k:
        f["scores"][0] = float("nan")
    elif defect == 8:
        f["scores"] = r.choice([f["scores"][None], torch.rand(k + 1), (f["scores"] * 9).long()])
    elif defect == 9 and k:
        f["labels"][0] = r.choice([-1, table.num_things, 10**6])
    elif defect == 10:
        f["labels"] = f["labels"].float()
    elif defect == 11 and k:
        f["mask_logits"][0, 0, 0] = r.choice([float("nan"), float("inf"), float("-inf")])
    elif defect == 12:
        f["mask_logits"] = r.choice([f["mask_logits"] > 0, (f["mask_logits"] > 0).long(), f["mask_logits"].half()])
    elif defect == 13:
        f["mask_logits"] = r.choice([torch.zeros(k, 0, 0), f["mask_logits"][:, 0], torch.randn(k + 1, 4, 4)])
    elif defect == 14:
        f["mask_logits"], f["mask_space"] = torch.randn(k, h + r.choice([0, 1]), w), "image"
    elif defect == 15:
        size = r.choice([(0, 3), (2, -1), (3,), (2 * h, w + 1), ("a", 2)])
    elif defect == 16:
        sem = sem.half()
    return sem, f, size


def malformed_queries(r: random.Random) -> tuple[Queries, tuple[int, int] | None]:
    k = int(CLASS_MAP.numel())
    q = r.choice([0, 1, 4])
    cls, masks = torch.randn(q, k + 1) * 3, torch.randn(q, r.choice([1, 4, 7]), r.choice([1, 5]))
    size = r.choice([None, (6, 9), (1, 1)])
    defect = r.randrange(14)
    if defect == 0:
        cls = r.choice([cls[None], torch.randn(q, k + 3), cls.long(), cls.half()])
    elif defect == 1 and q:
        cls[0, 0] = float("nan")
    elif defect == 2:
        masks = r.choice([masks.long(), masks > 0, masks[:, 0], torch.randn(q + 1, 4, 4), masks.half(),
                          torch.zeros(q, 0, 3)])
    elif defect == 3 and q:
        masks[0, 0, 0] = r.choice([float("nan"), float("inf")])
    elif defect == 4:
        size = r.choice([(0, 4), (3,), (-1, 2)])
    return Queries(cls, masks), size


def malformed_centres(r: random.Random) -> CentreOffsets:
    h, w = r.choice([1, 3, 8]), r.choice([1, 5, 9])
    sem, heat, off = torch.randn(5, h, w), torch.rand(1, h, w), torch.randn(2, h, w)
    make: Callable[..., CentreOffsets] = CentreOffsets
    defect = r.randrange(12)
    if defect == 0:
        heat[0, 0, 0] = float("nan")
    elif defect == 1:
        off[r.randrange(2), 0, 0] = r.choice([float("nan"), float("inf")])
    elif defect == 2:
        sem = r.choice([sem.long(), sem.half()])
    elif defect == 3:
        heat = r.choice([heat[0], -heat, (heat * 3).long(), heat.half()])
    elif defect == 4:
        off = r.choice([off[:1], torch.randn(2, h + 1, w)])
    elif defect == 5:
        sem, make = torch.full((1, h, w), r.choice([9, -1])), CentreOffsets.from_labels
    elif defect == 6:
        sem, make = torch.zeros(1, h, w), CentreOffsets.from_labels
    return make(sem, heat, off)


def refused_or_fused(fusion: Callable[..., object], *args: object, **kwargs: object) -> None:
    """``fusion(*args, **kwargs)`` fuses or raises ``ValueError`` / ``TypeError`` with a message; anything else
    propagates."""
    try:
        fusion(*args, **kwargs)
    except (ValueError, TypeError) as e:
        assert str(e), "an error without a message"


def check_errors(seed: int) -> None:
    r = random.Random(seed)
    table = tiny_table(2, 3)
    sem, fields, size = malformed_instances(r, table)
    try:
        inst = Instances(**fields)
    except (ValueError, TypeError) as e:
        assert str(e), "an error without a message"
        inst = None
    queries, qsize = malformed_queries(r)
    images = [malformed_centres(r)]
    for backend in ("native", "torch"):
        with ops.backend(backend):
            if inst is not None:
                for fusion in (UPSNetFusion(table, stuff_area_limit=1),
                               HeuristicFusion(table, flavor=HEURISTIC_FLAVORS[seed % 4])):
                    refused_or_fused(fusion, sem, [inst], output_size=size)
            refused_or_fused(MaskFormerFusion(QUERY_TABLE, QUERY_FLAVORS[seed % 5], class_map=CLASS_MAP), [queries],
                             output_size=qsize)
            refused_or_fused(CentreOffsetFusion(centre_cases.TABLE, flavor=("detectron2", "deeplab2")[seed % 2],
                                                threshold=0.1), images)


def check_imports(seed: int) -> None:
    """The importers of the exchange formats (``from_coco``, ``from_pairs``, ``from_label_divisor``) on maps and
    tables with one random defect: they import or raise ``ValueError`` / ``TypeError``."""
    r = random.Random(seed)
    table = tiny_table(2, 3)
    h, w = r.choice([1, 3, 6]), r.choice([1, 4])
    cats = torch.tensor([r.choice([-1, 0, 1, 2, 3, 4, 5, 101]) for _ in range(h * w)]).reshape(h, w)
    inst = torch.tensor([r.choice([0, 0, 1, 2, -1, 999]) for _ in range(h * w)]).reshape(h, w)
    divisor = r.choice([1000, 1000, 1, 0, -3, 2.5])
    encoded = torch.where(cats < 0, cats, cats * 1000 + inst)
    if r.random() < 0.3:
        encoded = encoded.float() + r.choice([0.0, 0.5, float("nan")])
    ids = torch.tensor([r.choice([0, 1, 2, 3]) for _ in range(h * w)]).reshape(h, w).numpy()
    info = [r.choice([{"id": i, "category_id": r.choice([1, 2, 101, 7])}, {"id": i}, {"category_id": 1}, [i]])
            for i in r.sample([1, 2, 3, 0, 1], r.randrange(4))]
    refused_or_fused(from_label_divisor, encoded, table, label_divisor=divisor, dataset_ids=r.random() < 0.5)
    refused_or_fused(from_pairs, torch.stack([cats, inst], -1), table, dataset_ids=r.random() < 0.5)
    refused_or_fused(from_coco, ids, info, table)


CHECKS: dict[str, Callable[[int], None]] = {"instances": check_instances, "queries": check_queries,
                                             "layouts": check_layouts, "errors": check_errors,
                                             "imports": check_imports}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases per check")
    parser.add_argument("--seed", type=int, default=0, help="first seed (each case uses the next one)")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), default=sorted(CHECKS))
    parser.add_argument("--max-failures", type=int, default=5)
    args = parser.parse_args(argv)
    end = time.monotonic() + args.seconds
    runs = dict.fromkeys(args.only, 0)
    failures = 0
    seed = args.seed
    while time.monotonic() < end and failures < args.max_failures:
        seed += 1
        for name in args.only:
            if args.cases is not None and runs[name] >= args.cases:
                continue
            try:
                CHECKS[name](seed)
            except Exception:  # report every disagreement with its seed, then go on
                failures += 1
                print(f"FAILED {name} seed {seed} (replay: --only {name} --seed {seed - 1} --cases 1)")
                print(traceback.format_exc(limit=-3))
            runs[name] += 1
        if args.cases is not None and all(v >= args.cases for v in runs.values()):
            break
    print(f"{sum(runs.values())} cases ({', '.join(f'{k} {v}' for k, v in runs.items())}), {failures} failed, "
          f"seeds {args.seed + 1}..{seed}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
