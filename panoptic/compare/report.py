"""The comparison's tables (main, ablation, run time) as a JSON-ready dict, Markdown and CSV.

All quality numbers are percentages (0-100) as in the paper's tables; times are milliseconds per image.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import __version__
from .rows import ABLATION_FLAGS
from .rule_counts import RULE_COUNTS

# Machinery of `panoptic compare` (the package exports the API: CompareConfig, run_compare, CompareResult).
__all__: list[str] = []

MAIN_COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "mIoU", "AP_box", "AP_mask",
                "ms_per_image")
"""Main-table metrics (paper Table 7) in column order."""

ABLATION_COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")
RUNTIME_COLUMNS = ("network_ms", "fusion_ms", "ms_per_image")

_HEADERS = {"PQ_th": "PQ^Th", "SQ_th": "SQ^Th", "RQ_th": "RQ^Th", "PQ_st": "PQ^St", "SQ_st": "SQ^St",
            "RQ_st": "RQ^St", "AP_box": "AP^box", "AP_mask": "AP^mask", "ms_per_image": "ms/image",
            "network_ms": "network ms", "fusion_ms": "fusion ms", "pano_loss": "Pano.", "ica": "ICA",
            "unknown": "Unk.", "gt_box": "GT Box", "gt_ica": "GT ICA", "gt_seg": "GT Seg.",
            "changed_px": "px changed", "unknown_px": "unknown px", "dropped": "inst. dropped"}


def _pct(x: float) -> float:
    return float("nan") if x is None or math.isnan(x) else 100.0 * float(x)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def pq_entry(pq: Mapping[str, Any]) -> dict[str, float]:
    """PQ / SQ / RQ of All, Things and Stuff from ``PanopticQuality.compute()``, in percent."""
    out = {}
    for row, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for k in ("pq", "sq", "rq"):
            out[k.upper() + suffix] = _pct(pq[row][k])
    return out


def main_entry(name: str, pq: Mapping[str, Any], semantic: Mapping[str, Any], detection: Mapping[str, Any],
               network_ms: Sequence[float], fusion_ms: Sequence[float]) -> dict[str, Any]:
    """One model's main-table entry."""
    net, fus = _mean(network_ms), _mean(fusion_ms)
    return {"name": name, **pq_entry(pq), "mIoU": _pct(semantic["miou"]), "AP_box": _pct(detection["AP_box"]),
            "AP_mask": _pct(detection["AP_mask"]), "ms_per_image": net + fus, "network_ms": net, "fusion_ms": fus}


def checks(models: Mapping[str, Mapping[str, Any]], ablation: Sequence[Mapping[str, Any]],
           claims: Sequence[Mapping[str, Any]] = ()) -> dict[str, bool]:
    """The paper's claims as measured: which hold on this run (only those whose rows were run).

    A PQ claim (``claims``, from :func:`panoptic.compare.intervals.paired_bootstrap`) holds only when its 95%
    interval of the PQ difference is above 0; its name says so.
    """
    out = {}
    for c in claims:
        out[f"{c['claim']}: {100 * c['level']:.0f}% interval above 0"] = bool(c["holds"])
    if "upsnet" in models and "mrcnn_psp" in models:
        out["UPSNet faster than MR-CNN-PSP"] = models["upsnet"]["ms_per_image"] < models["mrcnn_psp"]["ms_per_image"]
    by = {r["row"]: r for r in ablation}
    if "+ GT semantic" in by:
        out["GT-semantic oracle PQ >= 90"] = by["+ GT semantic"]["PQ"] >= 90.0
    return out


def _cpu_model() -> str:
    try:  # Linux names the CPU model; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the timings were measured on."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": _cpu_model(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "panoptic": __version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):  # (mean, std) over seeds
        mean, std = v
        return _fmt(mean) if math.isnan(mean) or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"
    if isinstance(v, bool):
        return "x" if v else ""
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.1f}"
    return str(v)


def _cell(entry: Mapping[str, Any], col: str, spread: bool) -> Any:
    """The value, or ``(mean, std)`` over seeds when the run had several and the column is a quality metric."""
    std = entry.get("std", {}).get(col)
    return (entry[col], std) if spread and std is not None and col not in RUNTIME_COLUMNS else entry[col]


def _table_rows(kind: str, results: Mapping[str, Any], spread: bool = True) -> tuple[list[str], list[list[Any]]]:
    spread = spread and len(results.get("seeds", ())) > 1
    if kind == "main":
        header = ["model", *MAIN_COLUMNS]
        return header, [[m["name"], *(_cell(m, c, spread) for c in MAIN_COLUMNS)] for m in results["models"].values()]
    if kind == "ablation":
        counts = [c for c in RULE_COUNTS if any(c in r for r in results["ablation"])]
        header = ["row", *ABLATION_FLAGS, *ABLATION_COLUMNS, *counts]
        return header, [[r["row"], *(r[f] for f in ABLATION_FLAGS), *(_cell(r, c, spread) for c in ABLATION_COLUMNS),
                         *(r.get(c, float("nan")) for c in counts)] for r in results["ablation"]]
    if kind == "runtime":
        header = ["model", "image_size", *RUNTIME_COLUMNS]
        return header, [[r["name"], "x".join(map(str, r["image_size"])), *(r[c] for c in RUNTIME_COLUMNS)]
                        for r in results["runtime"]]
    raise ValueError(f"unknown table {kind!r}; use 'main', 'ablation' or 'runtime'.")


def to_markdown(kind: str, results: Mapping[str, Any]) -> str:
    """``kind`` in ``"main"``, ``"ablation"``, ``"runtime"`` as a Markdown table (``mean ± std`` over seeds when
    ``results["seeds"]`` has several)."""
    header, rows = _table_rows(kind, results)
    lines = ["| " + " | ".join(_HEADERS.get(h, h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(kind: str, results: Mapping[str, Any]) -> str:
    """``kind`` as CSV with full precision (empty cell for NaN); seed means, plus ``<metric>_std`` columns when
    the run had several seeds."""
    header, rows = _table_rows(kind, results, spread=False)
    if len(results.get("seeds", ())) > 1 and kind in ("main", "ablation"):
        entries = list(results["models"].values()) if kind == "main" else results["ablation"]
        cols = MAIN_COLUMNS if kind == "main" else ABLATION_COLUMNS
        cols = tuple(c for c in cols if c not in RUNTIME_COLUMNS)
        header = [*header, *(f"{c}_std" for c in cols)]
        rows = [[*row, *(e["std"].get(c, float("nan")) for c in cols)] for row, e in zip(rows, entries, strict=True)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if isinstance(v, float) and math.isnan(v) else (int(v) if isinstance(v, bool) else v)
                    for v in row])
    return buf.getvalue()


def claim_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per PQ claim: verdict (holds: interval above 0; reversed: below 0; else not shown), difference
    and interval, whatever the verdict, and whether the held-out set is big enough for that gap
    (:func:`~panoptic.compare.intervals.held_out_size`)."""
    out = []
    for c in results.get("claims", ()):
        verdict = "holds" if c["holds"] else ("reversed" if c["hi"] < 0 else "not shown (the interval contains 0)")
        size = f"; {c['held_out']['text']}" if "held_out" in c else ""
        out.append(f"{c['claim']}: {verdict} ({c['a']} - {c['b']}: {c['text']}; paired bootstrap over "
                   f"{c['images']} held-out images x {c['seeds']} seed(s){size})")
    return out
