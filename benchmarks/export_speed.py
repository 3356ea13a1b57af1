"""Eager UPSNetFusion or HeuristicFusion against its exported program (panoptic.export), same inputs, interleaved.

The scene is the one of ``benchmarks/fusion_speed.py`` (Cityscapes categories, smooth synthetic logits, ROI
instances), at a smaller default size: the exported graph is dense over ``(B, N, H, W)``. Prints the median
milliseconds of ``fusion(sem, inst)`` (box-local, C kernels when built), ``run_exported(program, ...)`` (the
whole user call: pruning, paste and packing outside the graph, then the graph and the assembly) and the
graph alone, and checks that the results are identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_speed import make_inputs

from panoptic.categories import CategoryTable
from panoptic.export import export_fusion, pack, run_exported
from panoptic.fusion import HeuristicFusion, PanopticFusion, UPSNetFusion


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x512", help="HxW (default: %(default)s)")
    p.add_argument("--instances", type=int, default=20, help="detections per image (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repetitions (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the run")
    p.add_argument("--fusion", choices=["upsnet", "heuristic"], default="upsnet",
                   help="UPSNetFusion or HeuristicFusion (panopticapi flavor) (default: %(default)s)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    table = CategoryTable.cityscapes()
    fusion: PanopticFusion = UPSNetFusion(table) if args.fusion == "upsnet" else HeuristicFusion(table)
    sem, inst = make_inputs(args.instances, table, seed=0, h=h, w=w)
    t0 = time.perf_counter()
    program = export_fusion(fusion, sem, [inst])
    print(f"export: {time.perf_counter() - t0:.1f} s")
    module = program.module()
    packed = pack(fusion, sem, [inst])
    calls = {"eager": lambda: fusion(sem, [inst]), "exported": lambda: run_exported(program, fusion, sem, [inst]),
             "graph only": lambda: module(*packed.args)}
    assert fusion(sem, [inst])[0].equal(run_exported(program, fusion, sem, [inst])[0])
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, call in calls.items():
                t = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.fusion}, {h}x{w}, {args.instances} detections ({len(packed.keep[0])} kept), threads "
          f"{torch.get_num_threads()}, median of {args.repeats}")
    for name, ms in med.items():
        print(f"  {name:<11} {ms:8.1f} ms  {ms / med['eager']:5.1f}x eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
