"""``panoptic evaluate``: panoptic metrics of COCO-panoptic prediction files against ground truth.

Also the sharded form: ``--shard i/n --stats OUT`` on each machine, then ``--merge OUT...`` once. Every file
it writes (``--json``, ``--stats``, ``--per-class FILE``) is written atomically (temporary file in the same
folder, fsync, rename), so an interrupted or failing run leaves any previous file intact.

Wire it into a top-level parser with :func:`register`::

    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args()
    raise SystemExit(args.func(args))
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..engine.runlog import add_progress_argument, progress_enabled
from ..errors import run_command
from ..threads import add_threads_argument

# Machinery, not API: imported by other parts of the package, documented nowhere (see docs/design.md).
__all__: list[str] = []


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``).

    Returns:
        The new subparser (its ``func`` default is :func:`run`).
    """
    p = subparsers.add_parser(
        "evaluate", help="panoptic quality (PQ/SQ/RQ, PQ-dagger, Boundary PQ, PC) of COCO-panoptic predictions",
        description="Panoptic quality of COCO-panoptic predictions (JSON + PNG folder) against ground truth, "
                    "with panopticapi's exact rules; prints All/Things/Stuff and per-class tables. Optionally "
                    "PQ-dagger, Boundary PQ and Parsing Covering from the same pass; sharded with --shard/--stats "
                    "and --merge.")
    p.add_argument("--gt-json", type=Path, default=None, help="ground-truth COCO-panoptic JSON")
    p.add_argument("--gt-folder", type=Path, default=None, help="ground-truth PNG folder (default: JSON path "
                   "without .json)")
    p.add_argument("--pred-json", type=Path, default=None, help="prediction COCO-panoptic JSON")
    p.add_argument("--pred-folder", type=Path, default=None, help="prediction PNG folder (default: JSON path "
                   "without .json)")
    p.add_argument("--metrics", default="pq", help="comma-separated: pq, pq_dagger, boundary_pq, pc, or all "
                   "(default: %(default)s)")
    p.add_argument("--boundary-ratio", type=float, default=0.02,
                   help="Boundary PQ band width as a fraction of the image diagonal (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every metric to this JSON file")
    p.add_argument("--per-class", nargs="?", const="-", default=None, metavar="FILE",
                   help="per-class table of every metric, worst PQ first: printed as Markdown, or written to FILE "
                        "(.csv: CSV, anything else: Markdown)")
    p.add_argument("--shard", default=None, metavar="I/N", help="evaluate only the images at GT positions p with "
                   "p %% N == I (0-based) and write their statistics with --stats")
    p.add_argument("--stats", type=Path, default=None, metavar="OUT", help="write this run's mergeable statistics")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="STATS",
                   help="merge --stats files of all shards (fails on a missing or duplicated image) instead of "
                        "evaluating")
    p.add_argument("--allow-empty", action="store_true",
                   help="accept an evaluation where no image has a GT segment or a prediction (PQ 0, n 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: --threads)")
    add_threads_argument(p, "(worker processes unless --workers is given)")
    add_progress_argument(p)
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace) -> Any:
    from .streaming import METRICS, MetricConfig

    names = [m.strip() for m in str(getattr(args, "metrics", "pq") or "pq").split(",") if m.strip()]
    if names == ["all"]:
        names = list(METRICS)
    return MetricConfig(metrics=tuple(names), boundary_ratio=getattr(args, "boundary_ratio", 0.02))


def _write(path: Path, text: str) -> None:
    from ..atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def _evaluate(args: argparse.Namespace) -> dict[str, Any] | None:
    """The results dict, or None after writing a shard's statistics."""
    from .files import check_not_empty, evaluate_files
    from .shards import merge_stats, parse_shard, write_stats

    allow_empty = getattr(args, "allow_empty", False)
    if getattr(args, "merge", None):
        if args.gt_json is not None or args.pred_json is not None or args.shard is not None:
            raise ValueError("--merge takes only statistics files (and output options); drop --gt-json/--pred-json/"
                             "--shard.")
        metric = merge_stats(args.merge)
        results = metric.compute()
        check_not_empty(results, allow_empty)
        return results
    if args.gt_json is None or args.pred_json is None:
        raise ValueError("pass --gt-json and --pred-json (or --merge STATS...).")
    shard = parse_shard(args.shard) if getattr(args, "shard", None) else (0, 1)
    if shard != (0, 1) and getattr(args, "stats", None) is None:
        raise ValueError("--shard needs --stats OUT: a shard's numbers only mean something once merged with --merge.")
    metric, info = evaluate_files(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                                  workers=getattr(args, "workers", None),
                                  progress=progress_enabled(getattr(args, "progress", None)), config=_config(args),
                                  shard=shard)
    if getattr(args, "stats", None) is not None:
        gt = json.loads(Path(args.gt_json).read_text())
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        write_stats(args.stats, metric, info, gt["categories"])
        print(f"shard {shard[0]}/{shard[1]}: {metric.num_images} of {info['num_total']} images; wrote {args.stats}")
        if shard != (0, 1):
            return None
    results = metric.compute()
    check_not_empty(results, allow_empty)
    return results


def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out[k] = {str(kk): (_jsonable(vv) if isinstance(vv, dict) else vv) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the exit status (0, or 2 on bad input)."""
    from ..threads import default_threads
    from .tables import format_pq_results, format_summary, per_class_table

    workers = args.workers or args.threads or default_threads()
    try:
        args.workers = workers
        results = _evaluate(args)
    except ValueError as e:
        print(f"panoptic evaluate: error: {e}", file=sys.stderr)
        return 2
    if results is None:
        return 0
    per_class = getattr(args, "per_class", None)
    print(format_pq_results(results, per_class=per_class is None))
    if any(k in results for k in ("pq_dagger", "boundary_pq", "pc")):
        print()
        print(format_summary(results))
    if per_class == "-":
        print()
        print(per_class_table(results, "markdown"), end="")
    elif per_class is not None:
        path = Path(per_class)
        _write(path, per_class_table(results, "csv" if path.suffix.lower() == ".csv" else "markdown"))
        print(f"\nwrote {path}")
    if args.json is not None:
        _write(args.json, json.dumps(_jsonable(results), indent=2))
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m panoptic.evaluation.cli evaluate ...``."""
    parser = argparse.ArgumentParser(prog="panoptic")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
