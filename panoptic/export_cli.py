"""The ``panoptic export`` subcommand: write a fusion's exported program (``.pt2``) and, on request, ONNX."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch

# `panoptic export`'s command; the Python API is panoptic.export.
__all__: list[str] = []


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "export", help="write a fusion's per-pixel path as a torch.export program (.pt2), optionally ONNX",
        description="Export the per-pixel path of UPSNetFusion (panoptic argmax, class assignment, stuff area, "
                    "segment ids), HeuristicFusion (semantic argmax, stuff area, segment ids), MaskFormerFusion "
                    "(query assignment, overlap test, stuff merge, segment ids) or CentreOffsetFusion (semantic "
                    "argmax, offset grouping, majority class, stuff area, segment ids) with dynamic batch, height, "
                    "width and instance (query, centre) count. Load the .pt2 with torch.export.load and run it with "
                    "panoptic.export.run_exported (pruning and mask pasting, the heuristic's sequential paste, or "
                    "the query filter and mask resize, or the centre NMS run outside the graph).")
    p.add_argument("--out", type=Path, default=None,
                   help="program file (default: <fusion>_fusion.pt2)")
    p.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                   help="also write ONNX (torch.onnx.export(..., dynamo=True); needs the onnx and onnxscript packages)")
    p.add_argument("--categories", type=Path, default=None, metavar="JSON",
                   help="COCO-panoptic JSON with the categories (default: the synthetic dataset's)")
    p.add_argument("--fusion", choices=("upsnet", "heuristic", "maskformer", "centre"), default="upsnet",
                   help="UPSNetFusion, HeuristicFusion, MaskFormerFusion or CentreOffsetFusion (default: %(default)s)")
    p.add_argument("--flavor", choices=("panopticapi", "detectron2", "mmdet", "upsnet"), default="panopticapi",
                   help="HeuristicFusion flavor (default: %(default)s)")
    p.add_argument("--query-flavor", choices=("mask2former", "maskformer", "transformers", "kmax", "kmax_maskwise"),
                   default="mask2former",
                   help="MaskFormerFusion flavor (default: %(default)s)")
    p.add_argument("--centre-flavor", choices=("detectron2", "deeplab2"), default="detectron2",
                   help="CentreOffsetFusion flavor (default: %(default)s)")
    p.add_argument("--class-assignment", choices=("heuristic", "detector", "semantic"), default="heuristic",
                   help="UPSNetFusion class assignment (default: %(default)s)")
    p.add_argument("--stuff-area-limit", type=int, default=4096,
                   help="stuff area limit (CentreOffsetFusion's stuff_area) (default: %(default)s)")
    p.add_argument("--no-unknown", action="store_true", help="without the unknown channel")
    p.set_defaults(func=run)
    return p


def example_inputs(table: Any, seed: int = 0) -> tuple[torch.Tensor, list[Any]]:
    """A small random batch (2 images of 24x32, 3 and 5 instances) to trace the program with."""
    from .structures import Instances

    g = torch.Generator().manual_seed(seed)
    sem = torch.randn(2, table.num_classes, 24, 32, generator=g)
    inst = []
    for n in (3, 5):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([24.0, 16.0])
        boxes = torch.cat([xy, xy + 2 + torch.rand(n, 2, generator=g) * 8], 1)
        inst.append(Instances(boxes, 0.7 + 0.3 * torch.rand(n, generator=g),
                              torch.randint(0, max(table.num_things, 1), (n,), generator=g),
                              torch.randn(n, 28, 28, generator=g)))
    return sem, inst


def example_queries(table: Any, seed: int = 0) -> list[Any]:
    """Random queries of 2 images (3 and 5 queries, 12x16 mask logits) to trace the query program with."""
    from .queries import Queries

    g = torch.Generator().manual_seed(seed)
    return [Queries(torch.randn(n, table.num_classes + 1, generator=g) * 4, torch.randn(n, 12, 16, generator=g) * 3)
            for n in (3, 5)]


def example_centres(table: Any, seed: int = 0) -> list[Any]:
    """Random centre-offset outputs of 2 images (24x32) to trace the centre program with."""
    import torch.nn.functional as F

    from .centre_offsets import CentreOffsets

    g = torch.Generator().manual_seed(seed)
    heat = F.avg_pool2d(torch.rand(2, 1, 24, 32, generator=g), 3, 1, 1)  # smooth: a few peaks per image
    return [CentreOffsets(torch.randn(table.num_classes, 24, 32, generator=g), heat[i],
                          torch.randn(2, 24, 32, generator=g) * 3) for i in range(2)]


def run(args: argparse.Namespace) -> int:
    """Export, write the files atomically, print one line per file."""
    from .atomic import atomic_write, atomic_write_bytes
    from .categories import CategoryTable
    from .data import synthetic_categories
    from .engine.config import ConfigError
    from .export import export_fusion
    from .fusion import CentreOffsetFusion, HeuristicFusion, MaskFormerFusion, PanopticFusion, UPSNetFusion

    table = CategoryTable.from_json(args.categories) if args.categories else synthetic_categories()
    if not table.num_things:
        raise ConfigError("the categories have no thing class; the fusions need at least one.")
    fusion: PanopticFusion
    if args.fusion == "maskformer":
        fusion = MaskFormerFusion(table, args.query_flavor)
        program = export_fusion(fusion, example_queries(table), output_size=(24, 32))
    elif args.fusion == "centre":
        fusion = CentreOffsetFusion(table, stuff_area=args.stuff_area_limit, flavor=args.centre_flavor)
        program = export_fusion(fusion, example_centres(table))
    else:
        if args.fusion == "heuristic":
            fusion = HeuristicFusion(table, args.flavor, stuff_area_limit=args.stuff_area_limit)
        else:
            fusion = UPSNetFusion(table, unknown=not args.no_unknown, class_assignment=args.class_assignment,
                                  stuff_area_limit=args.stuff_area_limit)
        program = export_fusion(fusion, *example_inputs(table))
    if args.out is None:
        args.out = Path(f"{args.fusion}_fusion.pt2")
    buffer = io.BytesIO()  # torch.export.save takes a path or an io.BytesIO (it warns on other file objects)
    torch.export.save(program, buffer)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {args.out} (torch.export program; run it with panoptic.export.run_exported)")
    if args.onnx is not None:
        try:
            onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False)
        except ImportError as e:
            raise ConfigError(f"--onnx needs the onnx and onnxscript packages ({e}); pip install onnx "
                              "onnxscript.") from e
        atomic_write(args.onnx, lambda f: f.write(onnx_program.model_proto.SerializeToString()))
        print(f"wrote {args.onnx} (ONNX)")
    return 0
