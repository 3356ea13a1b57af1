"""Tables of :meth:`PanopticQuality.compute` / :func:`pq_compute` results: Markdown summaries and per-class
Markdown / CSV, sorted worst first. Formatting only; no metric is computed here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

__all__ = ["format_pq_results"]

_ROWS = ("All", "Things", "Stuff")
_NAMES = {"pq": "PQ", "pq_dagger": "PQ†", "boundary_pq": "Boundary PQ", "pc": "PC"}


def format_pq_results(results: Mapping[str, Any], per_class: bool = True) -> str:
    """Markdown tables (percent) of a :func:`pq_compute` / :meth:`PanopticQuality.compute` result (PQ only)."""
    lines = ["|        |    PQ |    SQ |    RQ |   N |", "|--------|------:|------:|------:|----:|"]
    for name in _ROWS:
        r = results[name]
        lines.append(f"| {name:6s} | {100 * r['pq']:5.1f} | {100 * r['sq']:5.1f} | {100 * r['rq']:5.1f} | "
                     f"{r['n']:3d} |")
    rows = results.get("per_class") or {}
    if per_class and rows:
        wn = max(8, *(len(str(r.get("name", ""))) for r in rows.values()))
        wi = max(2, *(len(str(c)) for c in rows))
        lines += ["", f"| {'id':>{wi}} | {'category':{wn}} | kind  |    PQ |    SQ |    RQ |    TP |    FP |    FN |",
                  f"|{'-' * (wi + 1)}:|{'-' * (wn + 2)}|-------|------:|------:|------:|------:|------:|------:|"]
        for cid, r in rows.items():
            kind = "thing" if r.get("isthing") else "stuff"
            lines.append(f"| {cid!s:>{wi}} | {r.get('name', '')!s:{wn}} | {kind} | {100 * r['pq']:5.1f} | "
                         f"{100 * r['sq']:5.1f} | {100 * r['rq']:5.1f} | {r.get('tp', '')!s:>5} | "
                         f"{r.get('fp', '')!s:>5} | {r.get('fn', '')!s:>5} |")
    return "\n".join(lines)


def _metrics_of(results: Mapping[str, Any]) -> list[str]:
    return ["pq"] + [m for m in ("pq_dagger", "boundary_pq", "pc") if m in results]


def _table(results: Mapping[str, Any], metric: str) -> Mapping[str, Any]:
    return results if metric == "pq" else results[metric]


def format_summary(results: Mapping[str, Any]) -> str:
    """One Markdown table (percent): a row per metric and column group All / Things / Stuff (with ``n``)."""
    head = "| metric | All | Things | Stuff | N (All / Th / St) |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for m in _metrics_of(results):
        t = _table(results, m)
        key = "pc" if m == "pc" else "pq"
        vals = " | ".join(f"{100 * t[r][key]:.1f}" for r in _ROWS)
        lines.append(f"| {_NAMES[m]} | {vals} | {t['All']['n']} / {t['Things']['n']} / {t['Stuff']['n']} |")
    return "\n".join(lines)


def per_class_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per category with every computed metric, sorted worst PQ first (then by id).

    Categories that count in no metric's means (no GT segment and no prediction) come last.
    """
    metrics = _metrics_of(results)
    rows = []
    for cid, r in results["per_class"].items():
        row: dict[str, Any] = {"id": cid, "name": r.get("name", ""), "kind": "thing" if r.get("isthing") else "stuff",
                               "pq": r["pq"], "sq": r["sq"], "rq": r["rq"], "tp": r["tp"], "fp": r["fp"], "fn": r["fn"]}
        for m in metrics[1:]:
            pr = results[m]["per_class"][cid]
            if m == "pc":
                row["pc"] = pr["pc"]
            else:
                row[m] = pr["pq"]
        row["_seen"] = r["tp"] + r["fp"] + r["fn"] > 0 or any(
            results[m]["per_class"][cid].get("area", 0) or results[m]["per_class"][cid].get("segments", 0)
            for m in metrics[1:])
        rows.append(row)
    rows.sort(key=lambda r: (not r["_seen"], r["pq"], str(r["id"])))
    for r in rows:
        del r["_seen"]
    return rows


def per_class_table(results: Mapping[str, Any], fmt: str = "markdown") -> str:
    """Per-class table of :func:`per_class_rows`: ``"markdown"`` (percent) or ``"csv"`` (fractions, full precision)."""
    rows = per_class_rows(results)
    cols = list(rows[0]) if rows else ["id", "name", "kind", "pq", "sq", "rq", "tp", "fp", "fn"]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()
    if fmt != "markdown":
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}.")
    titles = {"pq": "PQ", "sq": "SQ", "rq": "RQ", "tp": "TP", "fp": "FP", "fn": "FN", **_NAMES}
    lines = ["| " + " | ".join(titles.get(c, c) for c in cols) + " |",
             "|" + "|".join("---:" if c not in ("name", "kind") else "---" for c in cols) + "|"]
    for r in rows:
        cells = [f"{100 * v:.1f}" if isinstance(v, float) else str(v) for v in r.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
