"""The batched table of ``fusion_speed.py --device DEV`` (or ``--batch B``): UPSNetFusion on a batch, per image.

For 20, 50 and 100 instances at 1024x2048 (Cityscapes categories; ``--quick``: 20 at 256x512), a batch of ``B``
synthetic scenes (``--batch``, default 8) on ``--device``, interleaved, median milliseconds per image:

* ``loop``: ``UPSNetFusion(table)(sem, instances)``, the default path (one image after another, box-local);
* ``batched``: ``UPSNetFusion(table, batched=True)``: pruning and pasting per image, then the static-shape graph
  over the padded batch, then the segment tables (``panoptic.export.run_exported``);
* ``graph``: the graph alone on the packed batch (the per-pixel hot path, from the logits to the id map).

Both calls are checked to give identical results first. On CUDA every timed call is bracketed by
``torch.cuda.synchronize()``, the peak memory of the batched call is recorded (``torch.cuda.max_memory_allocated``),
and the graph runs once under ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation inside it
raises, which the table reports (``sync_free``). Target (issue 12): at 1024x2048 with 100 instances and batch 8,
``batched`` <= 3 ms per image on the GPU, with no host sync in the graph.

On the CPU (``--device cpu --batch B``) the same table runs (the sync check does not apply): the C kernels make
``loop`` the fast path there, and the table is the smoke test of this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from panoptic import CategoryTable, Instances
from panoptic.export import fusion_graph, pack
from panoptic.fusion import UPSNetFusion

TARGET_MS = 3.0


def device_table(args: argparse.Namespace, make_inputs: Callable[..., tuple[torch.Tensor, Instances]],
                 machine_info: Callable[[int, tuple[float, float, float]], dict[str, Any]]) -> dict[str, Any] | None:
    """Run the table; ``None`` (with a message) when the device is not usable here. ``make_inputs`` and
    ``machine_info`` are fusion_speed.py's scene builder and run record."""
    load_start = os.getloadavg()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device on this machine (torch {torch.__version__}, "
              f"cuda {torch.version.cuda}); run it where one exists, or use --device cpu.", file=sys.stderr)
        return None
    batch = args.batch or 8
    h, w = (256, 512) if args.quick else (1024, 2048)
    counts = (20,) if args.quick else (20, 50, 100)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    table = CategoryTable.cityscapes()
    loop, batched = UPSNetFusion(table), UPSNetFusion(table, batched=True)
    rows = {str(n): _row([make_inputs(n, table, args.seed + 1000 * n + i, h, w) for i in range(batch)], loop,
                         batched, device, repeats) for n in counts}
    last = rows[str(counts[-1])]
    target = None
    if device.type == "cuda" and not args.quick and batch == 8:
        target = last["batched_ms_per_image"] <= TARGET_MS and last["sync_free"] is True
    out = {"device": str(device), "device_name": _device_name(device), "batch": batch, "image": [h, w],
           "repeats": repeats, "rows": rows, "target_met": target,
           "machine": machine_info(repeats, load_start)}
    _print(out)
    return out


def _row(scenes: list[tuple[torch.Tensor, Instances]], loop: UPSNetFusion, batched: UPSNetFusion,
         device: torch.device, repeats: int) -> dict[str, Any]:
    """One row of the table: the batch of ``scenes`` on ``device``, checked equal, then timed."""
    sem = torch.cat([s[0] for s in scenes]).to(device)
    inst = [s[1].to(device) for s in scenes]
    graph = fusion_graph(batched)
    with torch.inference_mode():
        packed = pack(batched, sem, inst)
        a, b = loop(sem, inst), batched(sem, inst)
        if not all(x.equal(y) for x, y in zip(a, b, strict=True)):
            raise AssertionError(f"{len(inst[0])} instances: batched=True differs from the per-image loop")
        times = _time({"loop": lambda: loop(sem, inst), "batched": lambda: batched(sem, inst),
                       "graph": lambda: graph(*packed.args)}, device, repeats)
        row: dict[str, Any] = {f"{k}_ms_per_image": round(v / len(scenes), 3) for k, v in times.items()}
        row["kept"] = int(packed.args[1].shape[1])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            batched(sem, inst)
            row["batched_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            row["sync_free"] = _sync_free(lambda: graph(*packed.args))
    return row


def _time(calls: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median ms of each call, interleaved, after one untimed warm-up call each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _sync_free(fn: Callable[[], Any]) -> bool | str:
    """``True`` if ``fn`` runs without a host synchronisation, else the error CUDA's sync debug mode raised."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return True
    except RuntimeError as e:
        return str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _print(out: dict[str, Any]) -> None:
    h, w = out["image"]
    print(f"\nUPSNetFusion on {out['device_name']} ({out['device']}), batch {out['batch']}, {h}x{w}, median of "
          f"{out['repeats']}, ms per image\n")
    print("| instances (kept) | loop | batched | graph alone | loop / batched | batched peak GiB | graph sync-free |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for n, r in out["rows"].items():
        lp, bt, gr = r["loop_ms_per_image"], r["batched_ms_per_image"], r["graph_ms_per_image"]
        print(f"| {n} ({r['kept']}) | {lp:.2f} | {bt:.2f} | {gr:.2f} | {lp / bt:.2f}x | "
              f"{r.get('batched_peak_gib', 'n/a')} | {r.get('sync_free', 'n/a')} |")
    if out["target_met"] is not None:
        print(f"\ntarget (batched <= {TARGET_MS} ms per image at 100 instances, batch 8, no host sync): "
              f"{'met' if out['target_met'] else 'NOT met'}")
