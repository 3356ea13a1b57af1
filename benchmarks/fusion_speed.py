"""Fusion speed per image at 1024x2048 (Cityscapes categories): UPSNet head, heuristic, panopticapi, bounds.

For 20, 50 and 100 instances, all in one run and interleaved inside every repetition (A B C D E, A B C D E,
…), median wall-clock milliseconds per image on the CPU device, with torch's default thread count:

* ``upsnet``: ``UPSNetFusion(table)(sem, [inst])`` (the whole user call: validation, pruning, argmax, class
  assignment, stuff area, segment table, stuff scores);
* ``heuristic``: ``HeuristicFusion(table)`` (default ``"panopticapi"`` flavor), the same call;
* ``panopticapi``: panopticapi's per-image core ``combine_to_panoptic_single_core`` (RLE area/merge, RLE
  decode, numpy painting, ``id2rgb`` + PNG write to a temporary folder), called in-process for one image;
  its RLE inputs (instance masks = pasted mask logits ``>= 0``, one RLE per stuff class of the semantic
  argmax) are prepared before the timer, as its JSON inputs already hold RLE;
* ``dense``: the dense reference of the UPSNet head on the instances UPSNet keeps after pruning:
  ``torch.cat([stuff, instance channels, unknown]).argmax(0)``, channels prebuilt (only concatenation and
  argmax are timed); it is asserted equal to the channel map of the fast path once, outside the timer;
* ``floor``: one ``amax`` over the channels of the ``(1, 19, H, W)`` semantic logits.

**Quiet-machine targets**, each decided per instance count from the median of the repetitions' paired ratios and
its distribution-free 95% interval (see :func:`median_interval`; ``met`` when the whole interval is on the right
side of the limit, ``missed`` when all of it is on the wrong one, else ``undecided``): ``upsnet`` at most
:data:`FLOOR_TARGET` times the floor (4x with the C passes, 8x with ``--backend torch``) and ``panopticapi`` at
least :data:`PANOPTICAPI_TARGET` times ``heuristic``. The floor drifts with the host's other memory traffic by
more than the margin of these targets between runs, so one run's ratio of medians does not settle them; on a quiet
host about 41 repetitions narrow the interval to +-5% at 1024x2048 (``--repeats 41``, about 5 minutes); a busy
host widens it. ``--json`` stores them under ``targets``. Other processes' memory traffic (on a shared host often
invisible in the load average) slows the memory-bound floor, usually more than the fusions, which flatters these
ratios (a run where it slowed the fusions more gave a worse one): the run prints the floor's read speed, median and
fastest repetition, and flags a median below :data:`CONTENDED_FLOOR` of the fastest (``targets.floor_contended``);
such a run does not settle a target.

Scenes are synthetic but structured: smooth semantic logits (random values on a coarse grid, upsampled
bicubically), thing channels raised under each instance's mask, boxes with log-uniform sides in 20-400 px,
28x28 elliptical ROI mask logits with smooth noise, scores in (0.5, 1).

**Threads under load** (``--load K``, and always unless ``--quick``): at 64x128, 256x512 and 1024x2048 with 20, 50
and 100 instances, the UPSNet and heuristic calls with torch's default thread count (the fusion chooses its own
threads inside, :mod:`panoptic._ops.threads`) against ``torch.set_num_threads(1)``, interleaved; first on the
machine as it is (``quiet``), then beside ``K`` busy processes (``load``: pure-Python spin loops, bounded to
:data:`LOAD_MAX_S` seconds, stopping by themselves). Target: default <= 1.25x one thread at every size under
``--load 2`` on 2 cores, read from the median of the paired ratios and its distribution-free 95% interval
(``met`` when the whole interval is at most 1.25x, ``missed`` when all of it is above, else ``undecided``):
beside busy processes single ratios scatter 0.6-1.7x for identical code, so the verdict takes about 200
repetitions at 1024x2048 (``--threads-only --load 2 --repeats 200``, about 10 minutes; ``--sizes 1024x2048``
measures that size alone). ``--json`` stores both sections per size.

Usage::

    python benchmarks/fusion_speed.py --quick
    python benchmarks/fusion_speed.py --repeats 9 --json fusion_speed.json
    python benchmarks/fusion_speed.py --threads 1    # steadier on a busy machine
    python benchmarks/fusion_speed.py --load 2 --json fusion_speed.json    # default vs 1 thread beside 2 busy processes
    python benchmarks/fusion_speed.py --threads-only --load 2 --sizes 1024x2048 --repeats 600    # settle one size
    OMP_WAIT_POLICY=PASSIVE python benchmarks/fusion_speed.py --repeats 9    # busy machine, two threads

On a shared machine the multi-threaded numbers of the many-op implementations (UPSNet's fast path, the
heuristic) degrade far more than the few-op references when other processes compete for the cores (each
parallel op waits for a descheduled worker thread, and OpenMP's default spin-waiting makes it worse: set
``OMP_WAIT_POLICY=PASSIVE`` there); the load average and ``OMP_WAIT_POLICY`` are printed and stored with the
results.
"""

# Over 500 lines: every fusion family's benchmark shares these scenes, timers and tables; the families'
# owners extend it in parallel, so it is split by family once their branches are merged.

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from panoptic import CategoryTable, Instances, ops
from panoptic._ops.threads import CHOSEN
from panoptic.fusion import UPSNetFusion, box_regions, paste_masks
from panoptic.fusion.pruning import prune_instances

H, W = 1024, 2048


def fusion_backend() -> str:
    """``c`` if the fusions' primitives run in the C kernels (``panoptic.ops.backend``), ``torch`` otherwise."""
    from panoptic._ops import native_kernels

    return "c" if native_kernels() is not None else "torch"
COUNTS = (20, 50, 100)
SIZES = ((64, 128), (256, 512), (1024, 2048))
#: A busy process of ``--load`` stops by itself after this many seconds at the latest (it also stops when the
#: benchmark is gone); a phase that outlives it is flagged (``load_held``: false).
LOAD_MAX_S = 7200.0

#: The busy-machine target: the default thread count's call at most this many times the one-thread call.
LOAD_TARGET = 1.25
#: The quiet-machine targets: UPSNet's call at most this many times the floor, per backend of the passes.
FLOOR_TARGET = {"c": 4.0, "torch": 8.0}
#: The quiet-machine target of the heuristic: panopticapi's combine at least this many times its call.
PANOPTICAPI_TARGET = 10.0
IMPLS = ("upsnet", "heuristic", "panopticapi", "dense", "floor")


@dataclass
class Scene:
    sem: torch.Tensor  # (1, C, H, W)
    inst: Instances
    pa_inputs: dict[str, Any] | None  # panopticapi core arguments (RLE), or None if not installed
    dense_parts: list[torch.Tensor]  # prebuilt channels of the dense reference
    kept: int  # instances UPSNet keeps after pruning


def _smooth(g: torch.Generator, k: int, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(k, *size)`` smooth random field: normal values on a coarse grid, upsampled bicubically."""
    coarse = torch.randn(1, k, *grid, generator=g)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]


def make_inputs(n: int, table: CategoryTable, seed: int, h: int = H,
                w: int = W) -> tuple[torch.Tensor, Instances]:
    """Semantic logits ``(1, C, h, w)`` and ``n`` ROI instances of one synthetic scene."""
    g = torch.Generator().manual_seed(seed)
    nst, nth = table.num_stuff, table.num_things
    sem = torch.cat([_smooth(g, nst, (6, 12), (h, w)) * 3.0, _smooth(g, nth, (12, 24), (h, w)) * 2.0 - 2.5])
    side = torch.exp(torch.empty(n, 2).uniform_(math.log(20), math.log(400), generator=g))
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
    labels = torch.randint(0, nth, (n,), generator=g)
    scores = 0.5 + 0.5 * (0.001 + 0.998 * torch.rand(n, generator=g))
    axis = torch.linspace(-1, 1, 28)
    r2 = (axis[None, :, None] ** 2 * (0.7 + 0.6 * torch.rand(n, 1, 1, generator=g))
          + axis[None, None, :] ** 2 * (0.7 + 0.6 * torch.rand(n, 1, 1, generator=g)))
    noise = F.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=(28, 28), mode="bicubic",
                          align_corners=False)[:, 0]
    masks = 6.0 * (0.75 - r2) + 1.5 * noise
    inst = Instances(boxes, scores, labels, masks)
    # The semantic head agrees (mostly) with the detector: raise the instance's class under its mask.
    regions = box_regions(boxes, (h, w))
    for i, ((y0, y1, x0, x1), m) in enumerate(zip(regions.paste, paste_masks(masks, regions), strict=True)):
        if y1 > y0 and x1 > x0:
            sem[nst + int(labels[i]), y0:y1, x0:x1] += 2.0 * m.clamp(min=0)
    return sem[None].contiguous(), inst


def panopticapi_inputs(sem: torch.Tensor, inst: Instances, table: CategoryTable) -> dict[str, Any]:
    """Arguments of ``combine_to_panoptic_single_core`` for one image (RLE-encoded, as in its JSON inputs)."""
    from pycocotools import mask as coco_mask

    h, w = sem.shape[-2:]
    order = torch.argsort(inst.scores, descending=True, stable=True).tolist()
    regions = box_regions(inst.boxes, (h, w))
    pasted = paste_masks(inst.mask_logits, regions)
    anns = []
    canvas = np.zeros((h, w), dtype=np.uint8, order="F")
    for i in order:
        y0, y1, x0, x1 = regions.paste[i]
        canvas[:] = 0
        if y1 > y0 and x1 > x0:
            canvas[y0:y1, x0:x1] = (pasted[i] >= 0).numpy()
        if float(inst.scores[i]) < 0.5:
            continue
        anns.append({"segmentation": coco_mask.encode(canvas), "score": float(inst.scores[i]),
                     "category_id": table.to_dataset(table.num_stuff + int(inst.labels[i]))})
    arg = sem[0].argmax(0).numpy()
    stuff = []
    for k in np.unique(arg):
        if int(k) < table.num_stuff:
            stuff.append({"segmentation": coco_mask.encode(np.asfortranarray((arg == k).astype(np.uint8))),
                          "category_id": table.to_dataset(int(k))})
    categories = {c["id"]: c for c in table.to_coco()}
    images = {0: {"id": 0, "height": int(h), "width": int(w), "file_name": "image.png"}}
    return {"img_id2img": images, "inst_by_image": {0: anns}, "sem_by_image": {0: stuff},
            "categories": categories}


def dense_parts(fusion: UPSNetFusion, sem: torch.Tensor,
                inst: Instances) -> tuple[list[torch.Tensor], Instances]:
    """Stuff, instance and unknown channels of the dense head on the instances UPSNet keeps."""
    keep = prune_instances(inst, tuple(sem.shape[-2:]), fusion.pruning)
    kept = inst[keep]
    z = fusion.panoptic_logits(sem[0], kept)
    nst = fusion.table.num_stuff
    return [z[:nst], z[nst:-1], z[-1:]], kept


def build_scenes(table: CategoryTable, counts: tuple[int, ...], seed: int, with_pa: bool, h: int = H,
                 w: int = W) -> dict[int, Scene]:
    fusion = UPSNetFusion(table)
    scenes = {}
    for n in counts:
        sem, inst = make_inputs(n, table, seed + n, h, w)
        t = time.perf_counter()
        pa = panopticapi_inputs(sem, inst, table) if with_pa else None
        t_rle = time.perf_counter() - t
        parts, kept = dense_parts(fusion, sem, inst)
        # The fast path must give exactly the dense argmax (checked once, outside the timer).
        fast = fusion.panoptic_argmax(sem[0], kept)
        if not torch.equal(fast, torch.cat(parts).argmax(0)):
            raise AssertionError(f"UPSNetFusion fast path differs from the dense argmax (n={n}).")
        scenes[n] = Scene(sem, inst, pa, parts, len(kept))
        note = f", RLE encoding for panopticapi {1000 * t_rle:.0f} ms (not timed)" if with_pa else ""
        print(f"scene n={n}: UPSNet keeps {len(kept)} instances{note}", file=sys.stderr)
    return scenes


def _heuristic() -> tuple[Any, str | None]:
    try:
        from panoptic.fusion.heuristic import HeuristicFusion
    except Exception as e:  # being written by another helper: report and go on
        return None, f"{type(e).__name__}: {e}"
    return HeuristicFusion, None


def main(argv: list[str] | None = None) -> int:
    from _args import parse_sizes  # this folder is on sys.path when the script runs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s): 1 repetition at 512x1024")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved repetitions (default 7; 1 with --quick)")
    p.add_argument("--json", type=Path, default=None, help="write the medians to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for the whole run (default: torch's default). On a shared machine "
                        "1 thread gives steadier numbers: with 2 threads every parallel op waits for both")
    p.add_argument("--threads-only", action="store_true", help="only the default-vs-1-thread table per size (every "
                   "family: our calls only)")
    p.add_argument("--load", type=int, default=0, metavar="K",
                   help="also measure default vs 1 thread beside K busy processes (bounded, stop by themselves)")
    p.add_argument("--sizes", type=parse_sizes, default=None,
                   help="comma-separated HxW of the default-vs-1-thread table (default 64x128,256x512,1024x2048; "
                        "64x128 with --quick), e.g. 1024x2048 alone to settle its cells with many --repeats")
    p.add_argument("--backend", choices=["auto", "torch", "native"], default="auto",
                   help="per-pixel passes of the fusions: auto (the C extension when built) or torch (the fallback "
                        "of an install without a C compiler)")
    p.add_argument("--device", default="cpu",
                   help="cpu (the tables above) or cuda / cuda:N: the batched table of benchmarks/fusion_device.py "
                        "(per-image loop vs batched=True vs the graph alone, per image, with the host-sync check)")
    p.add_argument("--batch", type=int, default=None,
                   help="run the batched table (fusion_device.py) with this batch size on --device (default 8)")
    p.add_argument("--family", choices=["instances", "queries", "centre"], default="instances",
                   help="instances: UPSNet / heuristic (above); queries: MaskFormerFusion against HF transformers' "
                        "post-processing (see query_speed); centre: CentreOffsetFusion against detectron2's "
                        "Panoptic-DeepLab post-processing (see centre_family)")
    args = p.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    if args.device != "cpu" or args.batch is not None:
        from fusion_device import device_table  # this folder is on sys.path when the script runs

        with ops.backend(args.backend):
            res = device_table(args, make_inputs, machine_info)
        if res is None:
            return 2
        write_json(args.json, res)
        return 0
    if args.family == "queries":
        return query_speed(args)
    if args.family == "centre":
        return centre_family(args)
    with ops.backend(args.backend):
        return _run(args)


def _thread_sizes(args: argparse.Namespace) -> tuple[tuple[int, int], ...]:
    """The image sizes of the default-vs-1-thread table: ``--sizes``, else all of :data:`SIZES` (the first with
    ``--quick``)."""
    if args.sizes is not None:
        return args.sizes
    return SIZES[:1] if args.quick else SIZES


# Over 60 lines: a benchmark script read top to bottom (arguments, one interleaved timing loop, the report).
def _run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    if args.threads_only:
        table = CategoryTable.cityscapes()
        res = {"sizes": thread_table(table, _thread_sizes(args), repeats, args.seed, args.load)}
        print_thread_table(res["sizes"])
        write_json(args.json, res)
        return 0
    load_start = os.getloadavg()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    h, w = (H // 2, W // 2) if args.quick else (H, W)
    table = CategoryTable.cityscapes()

    try:
        from panopticapi.combine_semantic_and_instance_predictions import combine_to_panoptic_single_core
    except Exception as e:
        combine_to_panoptic_single_core = None
        print(f"panopticapi not available ({type(e).__name__}: {e}); pip install --no-deps panopticapi-lite "
              "pycocotools", file=sys.stderr)
    heuristic_cls, heuristic_err = _heuristic()
    if heuristic_cls is None:
        print(f"HeuristicFusion not importable, skipped: {heuristic_err}", file=sys.stderr)

    t = time.perf_counter()
    scenes = build_scenes(table, COUNTS, args.seed, combine_to_panoptic_single_core is not None, h, w)
    print(f"built {len(scenes)} scenes in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    upsnet = UPSNetFusion(table)
    heuristic = heuristic_cls(table) if heuristic_cls is not None else None
    tmp = tempfile.TemporaryDirectory()

    def run_pa(s: Scene) -> None:
        a = s.pa_inputs
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line per call
            combine_to_panoptic_single_core(0, [0], a["img_id2img"], a["inst_by_image"], a["sem_by_image"],
                                            tmp.name, 0.5, 4096, a["categories"])

    calls: dict[str, Callable[[Scene], Any] | None] = {
        "upsnet": lambda s: upsnet(s.sem, [s.inst]),
        "heuristic": (lambda s: heuristic(s.sem, [s.inst])) if heuristic is not None else None,
        "panopticapi": run_pa if combine_to_panoptic_single_core is not None else None,
        "dense": lambda s: torch.cat(s.dense_parts).argmax(0),
        "floor": lambda s: s.sem.amax(1),
    }
    times: dict[int, dict[str, list[float]]] = {n: {k: [] for k in IMPLS} for n in COUNTS}
    with torch.inference_mode():
        for n in COUNTS:  # warm-up (allocator, lazy imports), not timed
            for fn in calls.values():
                if fn is not None:
                    fn(scenes[n])
        for _ in range(repeats):
            for n in COUNTS:
                for name in IMPLS:
                    fn = calls[name]
                    if fn is None:
                        continue
                    t0 = time.perf_counter()
                    fn(scenes[n])
                    times[n][name].append(1000 * (time.perf_counter() - t0))
    tmp.cleanup()

    out: dict[str, Any] = {}
    for n in COUNTS:
        out[str(n)] = {f"{k}_ms": (round(statistics.median(v), 2) if v else None)
                       for k, v in times[n].items()}
        out[str(n)]["upsnet_kept"] = scenes[n].kept
        # the floor's read speed shows other processes' memory traffic, which the load average does not: the
        # median against the fastest repetition (the nearest this run came to an uncontended read)
        gb = scenes[n].sem.numel() * scenes[n].sem.element_size() / 1e6
        out[str(n)]["floor_gb_s"] = round(gb / out[str(n)]["floor_ms"], 1)
        out[str(n)]["floor_gb_s_best"] = round(gb / min(times[n]["floor"]), 1)
        # the floor is memory-bound and drifts with the host's other traffic: the median of each repetition's
        # ratio (measured seconds apart) cancels a drift the ratio of the medians keeps, and its interval decides
        pairs = [u / f for u, f in zip(times[n]["upsnet"], times[n]["floor"], strict=True)]
        out[str(n)].update(_paired_ratio("upsnet_floor", pairs))
        pairs = [p / h for p, h in zip(times[n]["panopticapi"], times[n]["heuristic"])]
        out[str(n)].update(_paired_ratio("panopticapi_heuristic", pairs))
    out["machine"] = {
        "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "numpy": np.__version__, "python": platform.python_version(), "processor": platform.processor(),
        "repeats": repeats, "image": [h, w], "timer": "wall clock (time.perf_counter), median per image",
        "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "backend": "c" if fusion_backend() == "c" else "torch",
        "heuristic": ("HeuristicFusion() default flavor" if heuristic is not None
                      else f"skipped: {heuristic_err}"),
    }

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or b is None else f"{a / b:.2f}x"

    print(f"\nmedian ms per image, {h}x{w}, {repeats} interleaved repetitions, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {load_start[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end, {fusion_backend()} passes\n")
    print("| instances (kept by UPSNet) | upsnet | heuristic | panopticapi | dense | floor | upsnet / floor "
          "| paired [95%] | panopticapi / heuristic | dense / upsnet |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in COUNTS:
        r = out[str(n)]
        u, hh, pa, d, f = (r[f"{k}_ms"] for k in IMPLS)
        paired = "n/a" if r["upsnet_floor_paired"] is None else _paired(r, "upsnet_floor")
        print(f"| {n} ({r['upsnet_kept']}) | {fmt(u)} | {fmt(hh)} | {fmt(pa)} | {fmt(d)} | {fmt(f)} "
              f"| {ratio(u, f)} | {paired} | {ratio(pa, hh)} | {ratio(d, u)} |")
    if (h, w) == (H, W):  # the targets are set at 1024x2048 (--quick runs a smaller image)
        out["targets"] = quiet_verdicts(out, FLOOR_TARGET[out["machine"]["backend"]],
                                        heuristic=out["machine"]["backend"] == "c")
        print_quiet_verdicts(out["targets"])
        out["targets"]["floor_contended"] = floor_contended(out)
        print(floor_speed_line(out))
    if not args.quick or args.load:
        out["sizes"] = thread_table(table, _thread_sizes(args), repeats, args.seed, args.load)
        print_thread_table(out["sizes"])
    if args.json is not None and not args.quick:
        out["export"] = export_check(table, args.seed, repeats)
        print(f"\nexport check: {json.dumps(out['export'])}")
    write_json(args.json, out)
    return 0


def export_check(table: CategoryTable, seed: int, repeats: int, size: tuple[int, int] = (256, 512),
                 n: int = 20) -> dict[str, Any]:
    """Export UPSNetFusion and HeuristicFusion (``panoptic.export``), check the program equals eager on a batch of
    two other images, and time eager against ``run_exported`` (median ms, interleaved; CPU, so not a speed-up)."""
    from panoptic import HeuristicFusion
    from panoptic.export import export_fusion, run_exported

    h, w = size
    example = [make_inputs(k, table, seed + k, 64, 128) for k in (3, 5)]
    sem = torch.cat([example[0][0], example[1][0]])
    batch = [make_inputs(k, table, seed + 100 + k, h, w) for k in (n, n // 2)]
    bsem = torch.cat([b[0] for b in batch])
    binst = [b[1] for b in batch]
    report: dict[str, Any] = {"size": f"{h}x{w}", "instances": [n, n // 2]}
    for name, fusion in (("upsnet", UPSNetFusion(table)), ("heuristic", HeuristicFusion(table))):
        t0 = time.perf_counter()
        program = export_fusion(fusion, sem, [e[1] for e in example])
        export_s = time.perf_counter() - t0
        with torch.inference_mode():
            eager, exported = fusion(bsem, binst), run_exported(program, fusion, bsem, binst)
            identical = all(a.equal(b) for a, b in zip(eager, exported, strict=True))
            times: dict[str, list[float]] = {"eager": [], "exported": []}
            for _ in range(repeats):
                for label, fn in (("eager", lambda f=fusion: f(bsem, binst)),
                                  ("exported", lambda f=fusion, p=program: run_exported(p, f, bsem, binst))):
                    t1 = time.perf_counter()
                    fn()
                    times[label].append(1000 * (time.perf_counter() - t1))
        report[name] = {"identical": identical, "export_s": round(export_s, 1),
                        **{f"{k}_ms": round(statistics.median(v), 1) for k, v in times.items()}}
        if not identical:
            raise AssertionError(f"{name}: the exported program differs from the eager fusion")
    return report


def machine_info(repeats: int, load_start: tuple[float, float, float]) -> dict[str, Any]:
    """What a family benchmark's JSON records about the run: cores, torch, threads, repetitions, load averages."""
    return {"cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeats": repeats, "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()]}


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` to ``path`` (if given) through a temporary file: no partial file."""
    if path is None:
        return
    tmp_json = path.with_name(path.name + ".tmp")
    tmp_json.write_text(json.dumps(obj, indent=2))
    tmp_json.replace(path)


#: What a busy process of ``--load`` runs: a spin loop that stops when its parent (the benchmark) is gone, or after
#: ``seconds`` at the latest.
_SPIN = ("import os, time\n"
         "parent, end = {parent}, time.monotonic() + {seconds}\n"
         "while os.getppid() == parent and time.monotonic() < end:\n"
         "    for _ in range(100000): pass\n")


@contextlib.contextmanager
def busy_processes(k: int, seconds: float = LOAD_MAX_S) -> Iterator[Callable[[], bool]]:
    """``k`` processes that keep one core busy each, stopped on exit; they also stop by themselves when this
    process is gone, or after ``seconds``.

    Yields:
        A function that says whether all ``k`` still run, for the caller to check at the end of its measurement
        (a phase that outlived its load measured a quiet machine).
    """
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(parent=os.getpid(), seconds=float(seconds))])
             for _ in range(k)]
    try:
        time.sleep(0.5)  # let them reach the scheduler
        yield lambda: all(pr.poll() is None for pr in procs)
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(timeout=10)


def _time_threads(calls: dict[str, Callable[[], Any]], default: int, repeats: int) -> dict[str, Any]:
    """Median ms of every call with ``default`` and with 1 torch thread, interleaved, in alternating order (a call
    right after another of the same work finds warmer caches and, under load, another share of the cores), each
    timed call after an untimed one at the same setting,
    ``{name}_paired``: the median of the ratios of the two calls of each repetition, which cancels the drift of
    the other processes' load between repetitions (the ratio of the medians does not), ``{name}_paired_ci``: its
    95% interval (see :func:`median_interval`; beside busy processes single ratios scatter 0.6-1.7x for
    identical code, so a median of a few repetitions settles nothing), and
    ``{name}_default_threads``: how many of the default calls ran with each thread count (the fusions' thread
    rule, ``panoptic._ops.threads``), so that a ratio can be read as "the same code on as many threads" or not."""
    times: dict[str, list[float]] = {}
    chosen: dict[str, Counter[int]] = {name: Counter() for name in calls}
    pair = (("1t", 1), ("default", default))
    for rep in range(repeats):
        for name, fn in calls.items():
            for label, n in (pair if rep % 2 == 0 else pair[::-1]):
                # Switching the count right before a call costs that call a price no caller with a fixed thread
                # count pays (10-15% of a 1024x2048 call beside 2 busy processes, measured 2026-12-07): one
                # untimed call at the new setting first, then the timed one, as in a caller's loop.
                torch.set_num_threads(n)
                fn()
                before = Counter(CHOSEN)
                t0 = time.perf_counter()
                fn()
                times.setdefault(f"{name}_{label}_ms", []).append(1000 * (time.perf_counter() - t0))
                if label == "default":
                    chosen[name] += Counter(CHOSEN) - before
    torch.set_num_threads(default)
    out: dict[str, Any] = {k: round(statistics.median(v), 2) for k, v in times.items()}
    for name in calls:
        ratios = [d / o for d, o in zip(times[f"{name}_default_ms"], times[f"{name}_1t_ms"], strict=True)]
        out.update(_paired_ratio(name, ratios))
        out[f"{name}_default_threads"] = {str(k): v for k, v in sorted(chosen[name].items())}
    return out


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median of ``values``: order statistics ``x_(j)`` and ``x_(n+1-j)`` with the
    largest ``j`` whose binomial tail ``P(Binomial(n, 1/2) < j)`` is at most ``(1 - level) / 2``, so that the
    interval covers the median with probability at least ``level`` whatever the distribution of the ratios
    (heavy-tailed beside busy processes). ``(-inf, inf)`` below 6 values, where no such interval exists.

    Example:
        >>> median_interval([1.0, 2.0, 3.0])
        (-inf, inf)
        >>> median_interval([float(v) for v in range(1, 21)])  # x_(6) and x_(15) of 20
        (6.0, 15.0)
    """
    x, n = sorted(values), len(values)
    tail, j, below = (1 - level) / 2, 0, 0.0
    while j < n // 2 and below + math.comb(n, j) / 2**n <= tail:  # below = P(Binomial(n, 1/2) < j + 1)
        below += math.comb(n, j) / 2**n
        j += 1
    return (x[j - 1], x[n - j]) if j else (-math.inf, math.inf)


def interval_verdict(ci: list[float | None], limit: float = LOAD_TARGET, at_least: bool = False) -> str:
    """``"met"`` if the whole interval of the paired ratio is at most ``limit`` (with ``at_least``: at least
    ``limit``), ``"missed"`` if all of it is on the other side, else ``"undecided"`` (more ``--repeats`` narrow
    it). ``None`` bounds (too few repetitions) are unbounded."""
    lo, hi = (-math.inf if ci[0] is None else ci[0]), (math.inf if ci[1] is None else ci[1])
    if at_least:
        return "met" if lo >= limit else "missed" if hi < limit else "undecided"
    return "met" if hi <= limit else "missed" if lo > limit else "undecided"


def _paired_ratio(name: str, ratios: list[float]) -> dict[str, Any]:
    """``{name}_paired`` (the median of the repetitions' ratios) and ``{name}_paired_ci`` (its 95% interval,
    :func:`median_interval`; ``None`` bounds below 6 repetitions); both ``None`` without ratios."""
    if not ratios:
        return {f"{name}_paired": None, f"{name}_paired_ci": None}
    return {f"{name}_paired": round(statistics.median(ratios), 3),
            f"{name}_paired_ci": [round(v, 3) if math.isfinite(v) else None for v in median_interval(ratios)]}


def quiet_verdicts(res: dict[str, Any], floor_limit: float, heuristic: bool = True) -> dict[str, Any]:
    """Per instance count, the verdicts of the quiet-machine targets from the paired intervals: UPSNet's call
    ``<= floor_limit`` times the floor and, with ``heuristic`` (the default passes: the target is theirs),
    panopticapi's combine ``>=`` :data:`PANOPTICAPI_TARGET` times the heuristic's call (absent without
    panopticapi)."""
    out: dict[str, Any] = {"upsnet_floor": {"limit": floor_limit, "at_least": False, "verdicts": {}}}
    if heuristic:
        out["panopticapi_heuristic"] = {"limit": PANOPTICAPI_TARGET, "at_least": True, "verdicts": {}}
    for n, r in res.items():
        if not isinstance(r, dict) or "upsnet_floor_paired_ci" not in r:
            continue
        for name, target in out.items():
            ci = r.get(f"{name}_paired_ci")
            if ci is not None:
                target["verdicts"][n] = interval_verdict(ci, target["limit"], target["at_least"])
    return out


#: A median floor read slower than this fraction of the run's fastest one: other processes' memory traffic.
CONTENDED_FLOOR = 0.8


def floor_contended(res: dict[str, Any]) -> bool:
    """Whether the floor's median read speed fell below :data:`CONTENDED_FLOOR` of its fastest repetition at some
    instance count (see :func:`floor_speed_line`)."""
    return any(res[str(n)]["floor_gb_s"] < CONTENDED_FLOOR * res[str(n)]["floor_gb_s_best"] for n in COUNTS)


def floor_speed_line(res: dict[str, Any]) -> str:
    """The floor's median and fastest read speed per instance count, with a warning where the median is below
    :data:`CONTENDED_FLOOR` of the fastest: other processes' memory traffic slows the memory-bound floor, usually
    more than the fusions, which flatters their ratios, and sometimes less (the load average does not show traffic
    from outside this machine's view, such as other tenants of a shared host)."""
    speeds = " / ".join(f"{res[str(n)]['floor_gb_s']:.1f} (fastest {res[str(n)]['floor_gb_s_best']:.1f})"
                        for n in COUNTS)
    line = f"floor read at {speeds} GB/s"
    if floor_contended(res):
        line += (f"; a median below {CONTENDED_FLOOR:g}x the fastest: memory traffic of other processes slowed the "
                 "floor, and the ratios above are flattered (or, where it slowed the calls more, made worse); rerun "
                 "when the host is quiet")
    return line


def print_quiet_verdicts(targets: dict[str, Any]) -> None:
    """One line per quiet-machine target: its verdict per instance count."""
    labels = {"upsnet_floor": "upsnet <= {limit:g}x the floor",
              "panopticapi_heuristic": "panopticapi >= {limit:g}x the heuristic"}
    for name, target in targets.items():
        if isinstance(target, dict) and target["verdicts"]:
            cells = ", ".join(f"{v} at {n}" for n, v in target["verdicts"].items())
            print(f"{labels[name].format(limit=target['limit'])} (95% interval of the paired median, order "
                  f"statistics): {cells} instances")


def print_load_verdicts(res: dict[str, Any], names: list[str] | None = None) -> None:
    """One line per phase: in how many cells the busy-machine target is met / missed / undecided, and in how many
    the load ended before the measurement did (no verdict: ``load_held`` false)."""
    for phase in ("quiet", "load"):
        verdicts: Counter[str] = Counter()
        for entry in res.values():
            if isinstance(entry, dict) and phase in entry:
                r = entry[phase]
                for key in r:
                    if key.endswith("_paired_ci") and (names is None or key[:-len("_paired_ci")] in names):
                        verdicts["load lost" if r.get("load_held") is False else interval_verdict(r[key])] += 1
        if verdicts:
            lost = f", load lost in {verdicts['load lost']}" if verdicts["load lost"] else ""
            print(f"{phase}: default <= {LOAD_TARGET}x one thread (95% interval of the paired median, order "
                  f"statistics): met in {verdicts['met']}, missed in {verdicts['missed']}, undecided in "
                  f"{verdicts['undecided']}{lost} of {sum(verdicts.values())} cells")


def _paired(r: dict[str, Any], name: str) -> str:
    ci = r.get(f"{name}_paired_ci")
    if not ci or ci[0] is None:
        return f"{r[f'{name}_paired']:.2f}x [too few repeats]"
    return f"{r[f'{name}_paired']:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]"


def thread_table(table: CategoryTable, sizes: tuple[tuple[int, int], ...], repeats: int, seed: int,
                 load: int) -> dict[str, Any]:
    """Per size and instance count: ``quiet`` and (with ``load``) ``load`` medians, default vs 1 thread."""
    from panoptic import HeuristicFusion

    default = torch.get_num_threads()
    upsnet, heuristic = UPSNetFusion(table), HeuristicFusion(table)
    result: dict[str, Any] = {"default_threads": default, "load_processes": load}
    with torch.inference_mode():
        for h, w in sizes:
            calls: dict[str, Callable[[], Any]] = {}
            for n in COUNTS:
                sem, inst = make_inputs(n, table, seed + n, h, w)
                calls[f"upsnet{n}"] = functools.partial(upsnet, sem, [inst])
                calls[f"heuristic{n}"] = functools.partial(heuristic, sem, [inst])
            for fn in calls.values():  # warm-up
                fn()
            result[f"{h}x{w}"] = quiet_and_load(calls, default, repeats, load)
    return result


def quiet_and_load(calls: dict[str, Callable[[], Any]], default: int, repeats: int, load: int) -> dict[str, Any]:
    """``{"quiet": ..., "load": ...}``: :func:`_time_threads` beside whatever runs, then (with ``load``) beside
    ``load`` busy processes, each with the load average at its end."""
    entry = {"quiet": _time_threads(calls, default, repeats)}
    entry["quiet"]["loadavg"] = round(os.getloadavg()[0], 2)
    if load:
        with busy_processes(load) as running:
            for fn in calls.values():  # warm-up beside the load
                fn()
            entry["load"] = _time_threads(calls, default, repeats)
            entry["load"]["loadavg"] = round(os.getloadavg()[0], 2)
            entry["load"]["load_held"] = running()
        if not entry["load"]["load_held"]:
            print(f"warning: a busy process ended before the load phase did (after {LOAD_MAX_S:.0f} s at the "
                  "latest): its numbers are partly from a quiet machine", file=sys.stderr)
    return entry


def print_thread_table(res: dict[str, Any]) -> None:
    """Markdown table: default / 1-thread ratio per size, count and phase."""
    print(f"\ndefault ({res['default_threads']} threads) vs 1 thread, median ms, {res['load_processes']} busy "
          "processes in the load phase\n")
    print("| size | phase | instances | upsnet 1t | upsnet default | ratio | paired [95%] | heuristic 1t "
          "| heuristic default | ratio | paired [95%] | default's threads (upsnet / heuristic) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, entry in res.items():
        if not isinstance(entry, dict):
            continue
        for phase, r in entry.items():
            for n in COUNTS:
                u1, ud = r[f"upsnet{n}_1t_ms"], r[f"upsnet{n}_default_ms"]
                h1, hd = r[f"heuristic{n}_1t_ms"], r[f"heuristic{n}_default_ms"]
                print(f"| {size} | {phase} (load {r['loadavg']}) | {n} | {u1:.1f} | {ud:.1f} | {ud / u1:.2f}x "
                      f"| {_paired(r, f'upsnet{n}')} | {h1:.1f} | {hd:.1f} | {hd / h1:.2f}x "
                      f"| {_paired(r, f'heuristic{n}')} "
                      f"| {_threads(r, f'upsnet{n}')} / {_threads(r, f'heuristic{n}')} |")
    print()
    print_load_verdicts(res)


def _threads(r: dict[str, Any], name: str) -> str:
    """``"1t x 12"``-style summary of the thread counts the default calls of ``name`` ran with."""
    return ", ".join(f"{k}t x {v}" for k, v in r.get(f"{name}_default_threads", {}).items()) or "n/a"


def family_threads(calls: dict[str, dict[str, Callable[[], Any]]], repeats: int, load: int) -> dict[str, Any]:
    """Per scene and call: ``quiet`` and (with ``load``) ``load`` medians, default vs 1 thread, interleaved (the
    busy-machine target of the instance family, for the query and centre families)."""
    default = torch.get_num_threads()
    result: dict[str, Any] = {"default_threads": default, "load_processes": load}
    with torch.inference_mode():
        for scene, c in calls.items():
            result[scene] = quiet_and_load(c, default, repeats, load)
    print(f"\ndefault ({default} threads) vs 1 thread, median ms of {repeats}, {load} busy processes in the load "
          "phase\n")
    print("| scene | phase | call | 1 thread | default | default / 1 thread | paired [95%] | default's threads |")
    print("|---|---|---|---|---|---|---|---|")
    for scene, entry in result.items():
        if not isinstance(entry, dict):
            continue
        for phase, r in entry.items():
            for name in calls[scene]:
                one, dflt = r[f"{name}_1t_ms"], r[f"{name}_default_ms"]
                print(f"| {scene} | {phase} (load {r['loadavg']}) | {name} | {one:.1f} | {dflt:.1f} "
                      f"| {dflt / one:.2f}x | {_paired(r, name)} | {_threads(r, name)} |")
    print_load_verdicts(result)
    return result


def ours_threads(args: argparse.Namespace, calls: dict[str, dict[str, Callable[[], Any]]], reference: str,
                 repeats: int, load_start: tuple[float, float, float]) -> dict[str, Any] | None:
    """With ``--threads-only`` or ``--load``: :func:`family_threads` of our calls (all but ``reference``: the
    busy-machine target concerns ours), written to ``--json`` alone with ``--threads-only``; else ``None``."""
    if not (args.threads_only or args.load):
        return None
    ours = {scene: {k: fn for k, fn in c.items() if k != reference} for scene, c in calls.items()}
    threads = family_threads(ours, repeats, args.load)
    if args.threads_only:
        write_json(args.json, {"threads": threads, "machine": machine_info(repeats, load_start)})
    return threads


# ------------------------------------------------------------------------------------------ query family
#: (name, classes, things, image (H, W), mask logits (h, w)) of the query benchmark: COCO and Cityscapes.
QUERY_SCENES = (("coco", 133, 80, (800, 1216), (200, 304)), ("cityscapes", 19, 8, (1024, 2048), (256, 512)))
#: Queries of the 100 kept per scene (most of a query model's queries predict "no object").
QUERY_KEPT = (5, 26)


def query_scene(num_queries: int, num_classes: int, kept: int, mask_size: tuple[int, int],
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, K + 1)`` class logits (``kept`` confident queries, the rest "no object") and smooth ``(Q, h, w)`` mask
    logits (random values on a grid 16x coarser, upsampled bilinearly)."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(num_queries, num_classes + 1, generator=g)
    cls[:, num_classes] += 4.0
    idx = torch.randperm(num_queries, generator=g)[:kept]
    cls[idx, torch.randint(0, num_classes, (kept,), generator=g)] += 12.0
    h, w = mask_size
    coarse = torch.randn(num_queries, 1, max(1, h // 16), max(1, w // 16), generator=g) * 6
    return cls, F.interpolate(coarse, size=mask_size, mode="bilinear", align_corners=False)[:, 0]


# Over 60 lines: one interleaved timing loop and its report, read top to bottom (a third is the docstring).
def query_speed(args: argparse.Namespace) -> int:
    """``--family queries``: 100 queries at COCO and Cityscapes sizes, 5 and 26 kept, interleaved per repetition:

    * ``hf``: transformers' ``Mask2FormerImageProcessor().post_process_panoptic_segmentation`` (masks resized to
      384x384, then the kept ones to the image size; ``label_ids_to_fuse`` = the stuff classes);
    * ``ours_hf``: ``MaskFormerFusion(flavor="transformers", resize_masks_to=(384, 384))``, the same rule on the
      same inputs (its maps equal HF's, see ``tests/test_maskformer_parity.py``);
    * ``ours``: ``MaskFormerFusion()`` (Mask2Former's rule, masks upsampled from their own size).

    Target: ``hf / ours_hf >= 5`` at every size. ``--quick``: half-size images, 1 repetition.
    """
    import logging
    from types import SimpleNamespace

    from panoptic import MaskFormerFusion, Queries

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    try:
        import transformers
        logging.getLogger("transformers").setLevel(logging.ERROR)
        proc = transformers.Mask2FormerImageProcessor()
    except Exception as e:  # the oracle is a test extra
        proc = None
        print(f"transformers not available ({type(e).__name__}: {e}); pip install transformers", file=sys.stderr)
    load_start = os.getloadavg()
    rows: dict[str, dict[str, Any]] = {}
    calls: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, k, things, size, msize in QUERY_SCENES:
        if args.quick:
            size, msize = (size[0] // 2, size[1] // 2), (msize[0] // 2, msize[1] // 2)
        table = CategoryTable.from_coco([{"id": i + 1, "isthing": int(i < things)} for i in range(k)])
        cmap = table.class_index_map("dataset")
        stuff = list(range(things, k))
        ours_hf = MaskFormerFusion(table, "transformers", class_map=cmap, label_ids_to_fuse=stuff,
                                   resize_masks_to=(384, 384))
        ours = MaskFormerFusion(table, class_map=cmap)
        for kept in QUERY_KEPT:
            cls, masks = query_scene(100, k, kept, msize, args.seed)
            q = Queries(cls, masks)
            out = SimpleNamespace(class_queries_logits=cls[None], masks_queries_logits=masks[None])
            key = f"{name} {size[0]}x{size[1]}, {kept} kept"
            calls[key] = {
                "ours_hf": functools.partial(ours_hf, q, size),
                "ours": functools.partial(ours, q, size),
            }
            if proc is not None:
                calls[key]["hf"] = functools.partial(proc.post_process_panoptic_segmentation, out,
                                                     label_ids_to_fuse=set(stuff), target_sizes=[size])
            rows[key] = {"segments": ours_hf(q, size)[0].num_segments}
    threads = ours_threads(args, calls, "hf", repeats, load_start)
    if args.threads_only:
        return 0
    if threads is not None:
        rows["threads"] = threads
    times: dict[str, dict[str, list[float]]] = {key: {n: [] for n in c} for key, c in calls.items()}
    with torch.inference_mode():
        for c in calls.values():  # warm-up
            for fn in c.values():
                fn()
        for _ in range(repeats):
            for key, c in calls.items():
                for n, fn in c.items():
                    t0 = time.perf_counter()
                    fn()
                    times[key][n].append(1000 * (time.perf_counter() - t0))
    print(f"\nmedian ms per image, {repeats} interleaved repetitions, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load_start[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| scene | HF transformers | ours, transformers flavour | ours, mask2former | HF / ours (same rule) "
          "| HF / ours (mask2former) |")
    print("|---|---|---|---|---|---|")
    for key, t in times.items():
        med = {n: round(statistics.median(v), 2) for n, v in t.items()}
        rows[key].update({f"{n}_ms": v for n, v in med.items()})
        hf = med.get("hf")
        rows[key]["speedup_same_rule"] = None if hf is None else round(hf / med["ours_hf"], 2)
        rows[key]["speedup_mask2former"] = None if hf is None else round(hf / med["ours"], 2)
        print(f"| {key} | {hf if hf is not None else 'n/a'} | {med['ours_hf']} | {med['ours']} "
              f"| {rows[key]['speedup_same_rule']} | {rows[key]['speedup_mask2former']} |")
    rows["machine"] = machine_info(repeats, load_start)
    write_json(args.json, rows)
    return 0


#: ``--family centre`` scenes: name -> (H, W, table, centres, nms_kernel, top_k, stuff_area), detectron2's configs.
CENTRE_SCENES = {
    "cityscapes_1024x2048": (1024, 2048, "cityscapes", 40, 7, 200, 2048),
    "coco_800x1216": (800, 1216, "coco", 25, 7, 200, 4096),
    "coco_640x640_k41": (640, 640, "coco", 25, 41, 200, 4096),
}


def coco_like_table() -> CategoryTable:
    """A table with COCO-panoptic's shape: 53 stuff and 80 thing categories."""
    return CategoryTable.from_coco([{"id": i + 1, "name": f"c{i}", "isthing": int(i < 80)} for i in range(133)])


def centre_scene(table: CategoryTable, h: int, w: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Logits ``(C, h, w)``, heatmap ``(1, h, w)`` and offsets ``(2, h, w)`` of ``n`` elliptic instances.

    Stuff is a smooth random field; each instance raises its thing class inside an ellipse, its offsets point
    (with noise) to its centre and the heatmap has a Gaussian bump there (sigma 8, as the training targets).
    """
    g = torch.Generator().manual_seed(seed)
    nst, nth = table.num_stuff, table.num_things
    logits = torch.cat([_smooth(g, nst, (6, 12), (h, w)) * 3.0, torch.full((nth, h, w), -4.0)])
    centres = torch.rand(n, 2, generator=g) * torch.tensor([h - 1.0, w - 1.0])
    radii = torch.exp(torch.empty(n, 2).uniform_(math.log(10), math.log(min(h, w) / 6), generator=g))
    cls = torch.randint(0, nth, (n,), generator=g)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    heat = torch.zeros(h, w)
    offsets = torch.randn(2, h, w, generator=g) * 4.0
    for i in range(n):  # scene building only, not timed
        (cy, cx), (ry, rx) = centres[i].tolist(), radii[i].tolist()
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        logits[nst + int(cls[i])][inside] = 6.0
        offsets[0][inside] = (cy - ys).expand(h, w)[inside] + 0.5 * torch.randn(int(inside.sum()), generator=g)
        offsets[1][inside] = (cx - xs).expand(h, w)[inside] + 0.5 * torch.randn(int(inside.sum()), generator=g)
        heat = torch.maximum(heat, torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 8.0 ** 2)))
    return logits.contiguous(), heat[None], offsets


def _centre_reference() -> Any:
    """The test suite's re-expression of detectron2's Panoptic-DeepLab post-processing (the parity oracle)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "centre_reference.py"
    spec = importlib.util.spec_from_file_location("centre_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Over 60 lines: one interleaved timing loop and its report, read top to bottom (a third is the docstring).
def centre_family(args: argparse.Namespace) -> int:
    """``--family centre``: ``CentreOffsetFusion`` against detectron2's Panoptic-DeepLab post-processing.

    Per scene of :data:`CENTRE_SCENES` (``--quick``: halved sides, one repetition), interleaved within every
    repetition, median wall-clock ms per image:

    * ``reference``: ``get_panoptic_segmentation``'s logic re-expressed in ``tests/centre_reference.py`` (centre
      NMS, a full-image strided ``torch.norm`` distance per centre, a Python loop per instance and stuff class),
      from the argmax'd labels detectron2 passes;
    * ``ours_labels``: ``CentreOffsetFusion`` from the same labels (``CentreOffsets.from_labels``), plus the
      ``encode`` to the same ``category * label_divisor + instance`` map;
    * ``ours_logits``: the same from ``(C, H, W)`` logits (argmax and stuff scores included).

    Both outputs are asserted equal once, outside the timer. Target: ``reference / ours_labels >= 5``.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from panoptic import CentreOffsetFusion, CentreOffsets

    ref = _centre_reference()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    load_start = os.getloadavg()
    runs: dict[str, dict[str, Callable[[], Any]]] = {}
    for name, (h, w, kind, n, kernel, top_k, stuff_area) in CENTRE_SCENES.items():
        if args.quick:
            h, w, name = h // 2, w // 2, f"{name}_half"
        table = CategoryTable.cityscapes() if kind == "cityscapes" else coco_like_table()
        logits, heat, offsets = centre_scene(table, h, w, n, args.seed)
        labels = logits.argmax(0)[None]
        fusion = CentreOffsetFusion(table, nms_kernel=kernel, top_k=top_k, stuff_area=stuff_area)
        things = set(range(table.num_stuff, table.num_classes))

        def reference(labels=labels, heat=heat, offsets=offsets, things=things, kernel=kernel, top_k=top_k,
                      stuff_area=stuff_area) -> torch.Tensor:
            return ref.reference_panoptic(labels, heat, offsets, things, 1000, stuff_area, -1, 0.1, kernel, top_k)[0]

        from_labels = CentreOffsets.from_labels(labels, heat, offsets)
        from_logits = CentreOffsets(logits, heat, offsets)

        def ours_labels(fusion=fusion, x=from_labels) -> torch.Tensor:
            return fusion.encode(fusion([x])[0])

        def ours_logits(fusion=fusion, x=from_logits) -> torch.Tensor:
            return fusion.encode(fusion([x])[0])

        with torch.inference_mode():
            expected, got = reference(), ours_labels()
        if not torch.equal(expected, got):
            raise AssertionError(f"{name}: CentreOffsetFusion differs from the reference on "
                                 f"{int((expected != got).sum())} pixels")
        runs[name] = {"reference": reference, "ours_labels": ours_labels, "ours_logits": ours_logits}
        print(f"{name}: {int(fusion([CentreOffsets(logits, heat, offsets)])[0].source.ge(0).sum())} centres kept, "
              "outputs equal", file=sys.stderr)
    threads = ours_threads(args, runs, "reference", repeats, load_start)
    if args.threads_only:
        return 0
    times = {s: {k: [] for k in calls} for s, calls in runs.items()}
    with torch.inference_mode():
        for _ in range(repeats):
            for scene, calls in runs.items():
                for impl, fn in calls.items():
                    t0 = time.perf_counter()
                    fn()
                    times[scene][impl].append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {s: {f"{k}_ms": round(statistics.median(v), 1) for k, v in t.items()}
                           for s, t in times.items()}
    print(f"\nmedian ms per image, {repeats} interleaved repetitions, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load_start[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end\n")
    print("| scene | reference | ours (labels) | ours (logits) | reference / ours (labels) |")
    print("|---|---|---|---|---|")
    for scene, r in out.items():
        r["speedup"] = round(r["reference_ms"] / r["ours_labels_ms"], 1)
        print(f"| {scene} | {r['reference_ms']:.0f} | {r['ours_labels_ms']:.0f} | {r['ours_logits_ms']:.0f} "
              f"| {r['speedup']:.1f}x |")
    if threads is not None:
        out["threads"] = threads
    out["machine"] = machine_info(repeats, load_start)
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
